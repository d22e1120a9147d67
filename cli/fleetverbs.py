"""The fleet kinds in the local control plane's verbs: `get devices|dpset`, `label device`.

    devicefabric get devices [NAME...]            NAME, CONNECTED, AGENT, ARCH, PROCESSES, AGE
    devicefabric get dpset [NAME...] [-n NS|-A]   NAME, DESIRED, CURRENT, UPDATED, AVAILABLE, AGE
    devicefabric label device NAME k=v [k-] [--overwrite]
                                                  sets (k=v) or removes (k-) labels; a Device
                                                  that does not exist yet is created with them,
                                                  so devices can be labelled before they connect

`get` takes a resource type first, as kubectl does (`devices`/`device`/`dev`,
`deviceprocesssets`/`deviceprocessset`/`dpset`, `deviceprocesses`/`deviceprocess`/`dproc`);
without one it lists DeviceProcesses (`bridge.verbs`). Labels follow Kubernetes' syntax (an
optional DNS-subdomain prefix and `/`, a name of at most 63 characters; values at most 63).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from devicefabric.bridge.errors import NotFoundError, StateDirError
from devicefabric.config.errors import ConfigError
from devicefabric.config.fleet import CONNECTED, DEVICE_KIND, SET_KIND
from devicefabric.config.resource import KIND
from devicefabric.config.settings import DEFAULT_STATE_DIR
from devicefabric.runtime.settings import add_flag

if TYPE_CHECKING:
    from devicefabric.bridge.controlplane.base import Resource
    from devicefabric.bridge.controlplane.local.store import LocalStore

TYPES: Final = {
    "deviceprocesses": KIND,
    "deviceprocess": KIND,
    "dproc": KIND,
    "devices": DEVICE_KIND,
    "device": DEVICE_KIND,
    "dev": DEVICE_KIND,
    "deviceprocesssets": SET_KIND,
    "deviceprocessset": SET_KIND,
    "dpset": SET_KIND,
}
SINGULAR: Final = {KIND: "deviceprocess", DEVICE_KIND: "device", SET_KIND: "deviceprocessset"}
DEVICE_COLUMNS: Final = ("NAME", "CONNECTED", "AGENT", "ARCH", "PROCESSES", "AGE")
SET_COLUMNS: Final = ("NAME", "DESIRED", "CURRENT", "UPDATED", "AVAILABLE", "AGE")
_LABEL_NAME: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_VALUE: Final = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    label = sub.add_parser("label", help="set or remove a Device's labels (sets select on them)")
    label.add_argument(
        "type",
        metavar="device",
        choices=("device", "devices", "dev"),
        help="the kind: only Devices carry the labels sets select on",
    )
    label.add_argument("name", metavar="NAME", help="the device name")
    label.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-", help="labels to set/remove")
    label.add_argument(
        "--overwrite", action="store_true", help="allow changing the value of an existing label"
    )
    add_flag(
        label,
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="the local control plane's state directory",
    )
    label.set_defaults(func=run_label)


def stores(state_dir: Path) -> dict[str, LocalStore]:
    """The store of each kind under `state_dir`."""
    from devicefabric.bridge.controlplane.local.fleet import (  # noqa: PLC0415
        device_store,
        set_store,
    )
    from devicefabric.bridge.controlplane.local.store import LocalStore  # noqa: PLC0415

    return {
        KIND: LocalStore(state_dir),
        DEVICE_KIND: device_store(state_dir),
        SET_KIND: set_store(state_dir),
    }


def resolve(names: list[str]) -> tuple[str, list[str]]:
    """`(kind, names)`: a leading resource type word picks the kind (default DeviceProcess)."""
    if names and names[0] in TYPES:
        return TYPES[names[0]], names[1:]
    return KIND, names


def parse_labels(items: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """`k=v` to set and `k-` to remove, validated; ConfigError naming the bad item."""
    setting: dict[str, str] = {}
    removing: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if not item.endswith("-"):
                raise ConfigError(f"label: {item!r}: expected KEY=VALUE or KEY-")
            removing.append(_label_key(item[:-1]))
            continue
        if not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"label: {item!r}: a value is at most 63 characters of letters, digits, '-', '_' "
                "and '.', starting and ending with a letter or digit"
            )
        setting[_label_key(key)] = value
    return setting, removing


def _label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    ok = bool(_LABEL_NAME.fullmatch(name)) and (
        not slash or (len(prefix) <= 253 and bool(_LABEL_PREFIX.fullmatch(prefix)))
    )
    if not ok:
        raise ConfigError(
            f"label: {key!r} is not a valid label key ([prefix/]name, the name at most 63 "
            "characters of letters, digits, '-', '_' and '.')"
        )
    return key


def run_label(args: argparse.Namespace) -> int:
    from devicefabric.config.names import validate_device  # noqa: PLC0415

    name = validate_device(args.name)
    setting, removing = parse_labels(args.labels)

    def change(labels: dict[str, str]) -> dict[str, str]:
        for key, value in setting.items():
            if labels.get(key, value) != value and not args.overwrite:
                raise ConfigError(
                    f"label: device {name} already has {key}={labels[key]}; "
                    "use --overwrite to change it"
                )
            labels[key] = value
        for key in removing:
            labels.pop(key, None)
        return labels

    store = stores(args.state_dir)[DEVICE_KIND]
    try:  # one locked step; only a label set creates a Device that is not there yet
        outcome = store.relabel(name, change, create=bool(setting))
    except OSError as exc:
        raise StateDirError(f"cannot write to {args.state_dir}: {exc.strerror or exc}") from exc
    except NotFoundError:
        raise NotFoundError(f'device "{name}" not found') from None
    print(f"device/{name} {'labeled' if outcome != 'unchanged' else 'not labeled'}")
    return 0


def load(store: LocalStore, kind: str, keys: list[str]) -> list[Resource]:
    found = [res for key in keys if (res := store.load(key)) is not None]
    if len(found) < len(keys):
        missing = next(k for k in keys if store.load(k) is None)
        raise NotFoundError(f'{SINGULAR[kind]} "{missing.rpartition("/")[2]}" not found')
    return found


def print_table(kind: str, resources: list[Resource], *, with_namespace: bool) -> None:
    if not resources:
        print("No resources found.", file=sys.stderr)
        return
    print(render(kind, resources, with_namespace=with_namespace))


def render(
    kind: str,
    resources: Iterable[Resource],
    *,
    with_namespace: bool = False,
    now: datetime | None = None,
) -> str:
    """kubectl-style columns of Devices or DeviceProcessSets."""
    from devicefabric.cli.verbs import age, align, condition_status  # noqa: PLC0415

    moment = now or datetime.now(UTC)
    columns = DEVICE_COLUMNS if kind == DEVICE_KIND else SET_COLUMNS
    header = (("NAMESPACE",) if with_namespace and kind == SET_KIND else ()) + columns
    rows = [list(header)]
    for res in sorted(resources, key=lambda r: (r.namespace, r.name)):
        status = res.status
        row = [res.namespace] if len(header) > len(columns) else []
        if kind == DEVICE_KIND:
            row += [
                res.name,
                condition_status(res, CONNECTED),
                _text(status.get("agentVersion")),
                _text(status.get("arch")),
                _text(status.get("processes")),
            ]
        else:
            row += [res.name] + [
                _text(status.get(f))
                for f in ("desiredNumber", "currentNumber", "updatedNumber", "availableNumber")
            ]
        rows.append([*row, age(res.creation_timestamp, moment)])
    return align(rows)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)
