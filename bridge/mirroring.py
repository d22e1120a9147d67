"""Desired mirroring: the control plane's resources, grouped by device, as retained `desired` docs.

Pure logic; the service publishes what `Mirror.plan` returns and feeds back what the broker
retains.

- `ResourceIndex` maps device -> resource keys from the informer, and says which devices must be
  re-mirrored when a resource changes: its old and new device when `deviceName` moved, its device
  when the spec, uid or generation changed; nothing for a status-only change.
- `check_spec` validates a stored spec with `DeviceProcessSpec` (defaults filled in). A resource
  whose spec is invalid is left out of its device's document (and reported as `InvalidSpec` on
  its own status by `statuses`); the rest of the device's processes still go.
- `Mirror` remembers two revisions per device: `observed`, what the broker retains (read back from
  `devices/+/desired`, including the echo of our own publishes), and `sent`, what we published and
  have not seen echoed yet. `plan(device, resources)` returns the document to publish, or None when
  its revision equals either (so nothing is published twice, and a bridge that read the retained
  documents back before planning republishes nothing unchanged). A device whose last resource is
  gone gets an empty document once, unless nothing was ever retained for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.config.names import is_device_name
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import Desired, DesiredProcess, make_desired, revision_of

EMPTY_REVISION: Final = revision_of([])


def check_spec(spec: Mapping[str, object]) -> DeviceProcessSpec | str:
    """The validated spec, or a one-line description of the first problem (stable text)."""
    try:
        return DeviceProcessSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"spec.{where}: {first['msg']}{more}"


def device_of(resource: Resource) -> str | None:
    """The resource's device when `spec.deviceName` is a valid device name."""
    name = resource.device
    return name if name is not None and is_device_name(name) else None


@dataclass(frozen=True, slots=True)
class _Entry:
    device: str | None
    uid: str
    generation: int
    spec: Mapping[str, object]


class ResourceIndex:
    """device -> keys, and what a resource change means for mirroring."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._by_device: dict[str, set[str]] = {}

    def keys_of(self, device: str) -> frozenset[str]:
        return frozenset(self._by_device.get(device, ()))

    def devices(self) -> Iterable[str]:
        return self._by_device.keys()

    def device_of_key(self, key: str) -> str | None:
        entry = self._entries.get(key)
        return entry.device if entry is not None else None

    def update(self, key: str, resource: Resource | None) -> set[str]:
        """Record the current `resource` of `key` (None: deleted); return devices to re-mirror."""
        old = self._entries.get(key)
        if resource is None:
            if old is None:
                return set()
            del self._entries[key]
            self._unlink(key, old.device)
            return {old.device} if old.device is not None else set()
        new = _Entry(device_of(resource), resource.uid, resource.generation, resource.spec)
        self._entries[key] = new
        if old == new:
            return set()
        affected: set[str] = set()
        if old is not None and old.device != new.device:
            self._unlink(key, old.device)
            if old.device is not None:
                affected.add(old.device)
        if new.device is not None:
            self._by_device.setdefault(new.device, set()).add(key)
            affected.add(new.device)
        return affected

    def _unlink(self, key: str, device: str | None) -> None:
        if device is None:
            return
        keys = self._by_device.get(device)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_device[device]


def build_desired(device: str, resources: Iterable[Resource]) -> Desired:
    """The desired document of `device` from its resources (invalid specs left out)."""
    processes: list[DesiredProcess] = []
    for resource in resources:
        spec = check_spec(resource.spec)
        if isinstance(spec, str) or spec.device_name != device:
            continue
        processes.append(
            DesiredProcess(
                namespace=resource.namespace,
                name=resource.name,
                uid=resource.uid,
                generation=resource.generation,
                spec=spec,
            )
        )
    return make_desired(processes)


class Mirror:
    """Which `desired` documents to publish; see the module doc."""

    def __init__(self) -> None:
        self.observed: dict[str, str] = {}  # device -> revision the broker retains
        self.sent: dict[str, str] = {}  # device -> revision published, echo not seen yet

    def observe(self, device: str, revision: str | None) -> None:
        """The broker retains `revision` for `device` (None: nothing retained)."""
        if revision is None:
            self.observed.pop(device, None)
        else:
            self.observed[device] = revision
        if revision is not None and self.sent.get(device) == revision:
            del self.sent[device]

    def reset_sent(self) -> None:
        """Forget unconfirmed publishes (after a reconnect the broker is read back again)."""
        self.sent.clear()

    def devices(self) -> set[str]:
        """Every device with a retained or in-flight document."""
        return set(self.observed) | set(self.sent)

    def plan(self, device: str, resources: Iterable[Resource]) -> Desired | None:
        """The document to publish for `device` now, or None when the broker has it already."""
        desired = build_desired(device, resources)
        current = self.sent.get(device, self.observed.get(device))
        if desired.revision == current:
            return None
        if not desired.processes and current is None:
            return None  # nothing was ever sent: there is nothing to stop
        return desired

    def published(self, device: str, revision: str) -> None:
        """`revision` was handed to the broker for `device`."""
        self.sent[device] = revision
