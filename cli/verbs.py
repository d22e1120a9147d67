"""`devicefabric apply`, `delete` and `get`: kubectl-like verbs of the local control plane.

They read and write the state directory through `LocalStore` (the same files `devicefabric up` and
`bridge run --control-plane local` watch), so a running bridge sees an `apply` within one poll.

    devicefabric apply -f FILE [-f FILE...]    `-f -` reads stdin; a directory applies its
                                               *.yaml/*.yml/*.json files; prints
                                               `deviceprocess/<name> created|configured|unchanged`
    devicefabric delete NAME... | -f FILE      prints `deviceprocess/<name> deleted`
    devicefabric get [NAME...] [-o wide|yaml|json] [-n NS | -A] [-w]   `-w`/`--watch`: keep the
                                               table up to date (`cli.watching`)

Exit codes: 0 done; 2 invalid input, with the file, document and field in one line, and nothing
written (every file is validated before the first write); 1 a named resource does not exist.
`register` adds the parsers only: yaml and the store are imported when a verb runs, so
`devicefabric agent run` still starts on a bare install.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.errors import NotFoundError, StateDirError
from devicefabric.cli import fleetverbs
from devicefabric.cli.fleetverbs import SINGULAR
from devicefabric.config.errors import ConfigError
from devicefabric.config.fleet import DEVICE_KIND
from devicefabric.config.names import validate_device
from devicefabric.config.resource import AGENT_CONNECTED, KIND, SYNCED
from devicefabric.config.settings import DEFAULT_STATE_DIR
from devicefabric.runtime.clock import parse_rfc3339
from devicefabric.runtime.settings import add_flag

if TYPE_CHECKING:
    from devicefabric.bridge.controlplane.local.store import LocalStore
    from devicefabric.bridge.controlplane.local.userfiles import Manifest

COLUMNS: Final = ("NAME", "DEVICE", "PHASE", "CONNECTED", "RESTARTS", "AGE")
WIDE_COLUMNS: Final = ("SYNCED", "PID", "EXIT", "GENERATION", "OBSERVED", "MESSAGE")
MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")
MISSING: Final = "-"
_MESSAGE_WIDTH: Final = 60


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = sub.add_parser(
        "apply", help="create or update DeviceProcesses, DeviceProcessSets and Devices from YAML"
    )
    apply.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a YAML file, a directory of them, or - for stdin (repeatable)",
    )
    _common(apply)
    apply.set_defaults(func=run_apply)

    delete = sub.add_parser("delete", help="delete DeviceProcesses (the device stops them)")
    delete.add_argument(
        "names", nargs="*", metavar="[TYPE] NAME", help="names (a type first: dev, dpset, dproc)"
    )
    delete.add_argument(
        "-f", "--filename", action="append", metavar="FILE", help="delete what FILE defines"
    )
    delete.add_argument(
        "--ignore-not-found", action="store_true", help="exit 0 when a NAME does not exist"
    )
    _common(delete)
    delete.set_defaults(func=run_delete)

    get = sub.add_parser(
        "get", help="show DeviceProcesses (or `get devices`, `get dpset`): Device, Phase, ..."
    )
    get.add_argument(
        "names",
        nargs="*",
        metavar="[TYPE] NAME",
        help="a type first (devices|dev, dpset, dproc; default dproc), then only these names",
    )
    get.add_argument(
        "-o", "--output", choices=("wide", "yaml", "json"), help="output format (default: table)"
    )
    get.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace")
    add_flag(get, "--watch", action="store_true", help="keep the table up to date until Ctrl-C")
    get.add_argument(
        "-w", dest="watch", action="store_true", default=argparse.SUPPRESS, help="same as --watch"
    )
    _common(get)
    get.set_defaults(func=run_get)


def _common(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser,
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="the local control plane's state directory",
    )
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the manifest's, else 'default')"
    )


def _store(args: argparse.Namespace) -> LocalStore:
    from devicefabric.bridge.controlplane.local.store import LocalStore  # noqa: PLC0415

    return LocalStore(args.state_dir)


def _read_manifests(paths: Sequence[str], namespace: str | None) -> list[Manifest]:
    """Every manifest of every file, validated; ConfigError before anything is written."""
    from devicefabric.bridge.controlplane.local.userfiles import parse_manifests  # noqa: PLC0415

    manifests: list[Manifest] = []
    for raw in paths:
        for source, text in _read_sources(raw):
            manifests.extend(parse_manifests(text, source, namespace))
    seen: set[str] = set()
    for manifest in manifests:
        ident = f"{SINGULAR[manifest.kind]} {manifest.key}"
        if ident in seen:
            raise ConfigError(f"{ident} is defined more than once")
        seen.add(ident)
    return manifests


def _read_sources(raw: str) -> list[tuple[str, str]]:
    if raw == "-":
        try:  # the bytes, decoded strictly: a terminal's lenient decoding would hide bad input
            return [("<stdin>", sys.stdin.buffer.read().decode("utf-8"))]
        except UnicodeDecodeError as exc:
            raise ConfigError(f"-f -: cannot read: {exc}") from None
    path = Path(raw)
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES)
            if not files:
                raise ConfigError(f"{raw}: no {'/'.join(MANIFEST_SUFFIXES)} files in directory")
            return [(str(p), p.read_text(encoding="utf-8")) for p in files]
        return [(raw, path.read_text(encoding="utf-8"))]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"-f {raw}: cannot read: {reason}") from None


def _namespace(args: argparse.Namespace) -> str:
    from devicefabric.bridge.controlplane.local.userfiles import (  # noqa: PLC0415
        DEFAULT_NAMESPACE,
        validate_namespace,
    )

    if args.namespace is None:
        return DEFAULT_NAMESPACE
    return validate_namespace(args.namespace)


def run_apply(args: argparse.Namespace) -> int:
    namespace = _namespace(args) if args.namespace is not None else None
    manifests = _read_manifests(args.filename, namespace)
    by_kind = fleetverbs.stores(args.state_dir)
    for kind, store in by_kind.items():  # Devices and sets first: a set's selector then matches
        batch = [m for m in manifests if m.kind == kind]
        if not batch or kind == KIND:
            continue
        _apply(args, store, batch)
    _apply(args, by_kind[KIND], [m for m in manifests if m.kind == KIND])
    return 0


def _apply(args: argparse.Namespace, store: LocalStore, batch: list[Manifest]) -> None:
    if not batch:
        return
    try:
        results = store.apply(batch)
    except OSError as exc:  # a full disk, a read-only directory: one line, exit 1
        raise StateDirError(f"cannot write to {args.state_dir}: {_reason(exc)}") from exc
    for manifest, result in zip(batch, results, strict=True):
        print(f"{SINGULAR[manifest.kind]}/{manifest.name} {result.outcome}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def run_delete(args: argparse.Namespace) -> int:
    from devicefabric.bridge.controlplane.local.userfiles import validate_name  # noqa: PLC0415

    kind, names = fleetverbs.resolve(args.names)
    if bool(names) == bool(args.filename):
        raise ConfigError("delete: give either [TYPE] NAME... or -f FILE")
    if args.filename:
        ns = _namespace(args) if args.namespace is not None else None
        targets = [(m.kind, m.key) for m in _read_manifests(args.filename, ns)]
    elif kind == DEVICE_KIND:
        targets = [(kind, validate_device(name)) for name in names]
    else:
        namespace = _namespace(args)
        targets = [(kind, f"{namespace}/{validate_name(name, 'NAME')}") for name in names]
    by_kind = fleetverbs.stores(args.state_dir)
    missing = []
    for target_kind, key in targets:
        try:
            deleted = by_kind[target_kind].delete(key)
        except OSError as exc:
            raise StateDirError(f"cannot write to {args.state_dir}: {_reason(exc)}") from exc
        if deleted:
            print(f"{SINGULAR[target_kind]}/{key.rpartition('/')[2]} deleted")
        else:
            missing.append((target_kind, key))
    if missing and not args.ignore_not_found:
        target_kind, key = missing[0]
        namespace, _, name = key.rpartition("/")
        where = f' in namespace "{namespace}"' if namespace else ""
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFoundError(f'{SINGULAR[target_kind]} "{name}" not found{where}{more}')
    return 0


def run_get(args: argparse.Namespace) -> int:
    from devicefabric.bridge.controlplane.local.userfiles import validate_name  # noqa: PLC0415

    kind, names = fleetverbs.resolve(args.names)
    if kind != KIND:
        return _get_fleet(args, kind, names)
    args.names = names
    store = _store(args)
    if args.all_namespaces and args.names:
        raise ConfigError("get: NAME cannot be combined with --all-namespaces")
    namespace: str | None
    if args.names:
        namespace = _namespace(args)
        keys = [f"{namespace}/{validate_name(name, 'NAME')}" for name in args.names]
        absent = [key for key in keys if store.load(key) is None]
        if absent:
            namespace, _, name = absent[0].partition("/")
            raise NotFoundError(f'deviceprocess "{name}" not found in namespace "{namespace}"')
    else:
        namespace = None if args.all_namespaces else _namespace(args)
        keys = [
            key for key in store.list_keys() if namespace is None or key.startswith(namespace + "/")
        ]
    if args.watch:
        return _watch(args, store, keys if args.names else None, namespace)
    if args.output in ("yaml", "json"):
        docs = (doc for key in keys if (doc := store.document(key)) is not None)
        _print_documents(docs, args.output, single=len(args.names) == 1)
        return 0
    resources = [res for key in keys if (res := store.load(key)) is not None]
    if not resources:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    print(
        render_table(
            resources,
            wide=args.output == "wide",
            with_namespace=args.all_namespaces,
        )
    )
    return 0


def _get_fleet(args: argparse.Namespace, kind: str, names: list[str]) -> int:
    from devicefabric.bridge.controlplane.local.userfiles import validate_name  # noqa: PLC0415

    if args.watch:
        raise ConfigError("get: --watch shows DeviceProcesses only")
    store = fleetverbs.stores(args.state_dir)[kind]
    if kind == DEVICE_KIND:  # a name no device can have is a usage error, not "not found"
        keys = [validate_device(n) for n in names] if names else store.list_keys()
    elif names:
        keys = [f"{_namespace(args)}/{validate_name(n, 'NAME')}" for n in names]
    else:
        prefix = None if args.all_namespaces else _namespace(args) + "/"
        keys = [k for k in store.list_keys() if prefix is None or k.startswith(prefix)]
    resources = fleetverbs.load(store, kind, keys)
    if args.output in ("yaml", "json"):
        docs = (doc for key in keys if (doc := store.document(key)) is not None)
        _print_documents(docs, args.output, single=len(names) == 1)
        return 0
    fleetverbs.print_table(kind, resources, with_namespace=args.all_namespaces)
    return 0


def _watch(
    args: argparse.Namespace, store: LocalStore, keys: list[str] | None, namespace: str | None
) -> int:
    from devicefabric.cli import watching  # noqa: PLC0415

    if args.output in ("yaml", "json"):
        raise ConfigError("get: --watch shows a table: use it without -o or with -o wide")
    table = watching.deviceprocess_table(
        store, keys, namespace, wide=args.output == "wide", with_namespace=args.all_namespaces
    )
    where = "every namespace" if namespace is None else f"namespace {namespace}"
    return watching.watch(table, f"deviceprocesses in {where} ({args.state_dir})")


def _print_documents(docs: Iterator[dict[str, object]], fmt: str, *, single: bool) -> None:
    """One document, or a `List` written item by item (memory flat however many there are)."""
    import yaml  # noqa: PLC0415 - the bridge extra

    out = sys.stdout
    if single:
        doc = next(docs, None)
        if doc is not None:
            out.write(json.dumps(doc, indent=2) + "\n" if fmt == "json" else _yaml(yaml, doc))
        return
    if fmt == "json":  # the same text `json.dumps(list, indent=2)` gives, one item at a time
        out.write('{\n  "apiVersion": "v1",\n  "kind": "List",\n  "items": [')
        first = True
        for doc in docs:
            item = textwrap.indent(json.dumps(doc, indent=2), "    ")
            out.write(("\n" if first else ",\n") + item)
            first = False
        out.write("]\n}\n" if first else "\n  ]\n}\n")
        return
    out.write("apiVersion: v1\nkind: List\n")
    wrote = False
    for doc in docs:
        out.write(("" if wrote else "items:\n") + _yaml(yaml, [doc]))
        wrote = True
    if not wrote:
        out.write("items: []\n")


def _yaml(yaml: Any, body: object) -> str:
    return str(yaml.safe_dump(body, sort_keys=False))


# -- the table (also drawn live by `devicefabric up --demo`) -----------------------------------
def render_table(
    resources: Iterable[Resource],
    *,
    wide: bool = False,
    with_namespace: bool = False,
    now: datetime | None = None,
) -> str:
    """kubectl-style aligned columns NAME, DEVICE, PHASE, CONNECTED, RESTARTS, AGE."""
    moment = now or datetime.now(UTC)
    header = (("NAMESPACE",) if with_namespace else ()) + COLUMNS + (WIDE_COLUMNS if wide else ())
    rows = [list(header)]
    for res in sorted(resources, key=lambda r: (r.namespace, r.name)):
        row = [res.namespace] if with_namespace else []
        row += table_row(res, moment)
        if wide:
            row += _wide_cells(res)
        rows.append(row)
    return align(rows)


def align(rows: list[list[str]]) -> str:
    """kubectl-style columns: each as wide as its widest cell, three spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def table_row(res: Resource, now: datetime) -> list[str]:
    status = res.status
    return [
        res.name,
        res.device or MISSING,
        _text(status.get("phase")),
        condition_status(res, AGENT_CONNECTED),
        _text(status.get("restarts")),
        age(res.creation_timestamp, now),
    ]


def _wide_cells(res: Resource) -> list[str]:
    status = res.status
    message = _text(status.get("message")).replace("\n", " ")
    if len(message) > _MESSAGE_WIDTH:
        message = message[: _MESSAGE_WIDTH - 3] + "..."
    return [
        condition_status(res, SYNCED),
        _text(status.get("pid")),
        _text(status.get("exitCode")),
        str(res.generation),
        _text(status.get("observedGeneration")),
        message,
    ]


def condition_status(res: Resource, ctype: str) -> str:
    """`status` of the condition `ctype` ("True"/"False"/"Unknown"), or "-" when absent."""
    conditions = res.status.get("conditions")
    if isinstance(conditions, list):
        for cond in conditions:
            if isinstance(cond, dict) and cond.get("type") == ctype:
                return _text(cond.get("status"))
    return MISSING


def age(timestamp: str, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 3h, 5d (a missing or bad timestamp shows "-")."""
    created = parse_rfc3339(timestamp)
    if created is None:
        return MISSING
    seconds = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)
