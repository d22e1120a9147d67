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
- Limits: a document holds at most `MAX_PROCESSES` processes and encodes to at most `limit` bytes
  (the brokers' payload limit; a larger PUBLISH gets the bridge disconnected). `fit_desired`
  admits a device's valid resources smallest encoded entry first (ties by key) while both limits
  hold; a resource that does not fit, or whose metadata the wire format refuses, is left out of
  the document and gets a one-line reason (`Mirror.rejection`, written as `Synced=False` with
  reason `InvalidSpec`). `Mirror` passes the entries of the device's last planned document:
  unchanged ones are admitted first (a newcomer never displaces a running process), and a
  changed resource that no longer fits keeps its previous entry when that fits. So growing a
  device past a limit leaves its retained document as it was, and no resource content can make
  planning raise. (A restarted bridge has no previous entries: it admits smallest first.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.config.names import is_device_name
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import (
    MAX_PAYLOAD_BYTES,
    MAX_PROCESSES,
    Desired,
    DesiredProcess,
    encode,
    make_desired,
    revision_of,
)

EMPTY_REVISION: Final = revision_of([])
# Bytes of a document with no process: `{"processes":[],"revision":"<16 hex>"}`.
_EMPTY_SIZE: Final = len(encode(make_desired([])))


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


@dataclass(frozen=True, slots=True)
class Fitted:
    """A device's document and the resources left out of it for a limit (key -> reason)."""

    desired: Desired
    rejected: dict[str, str]


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "metadata"
    return f"{where}: {first['msg']}"


def _process(device: str, resource: Resource) -> DesiredProcess | str | None:
    """The resource's entry, a reason the wire refuses it, or None (invalid spec, other device)."""
    spec = check_spec(resource.spec)
    if isinstance(spec, str) or spec.device_name != device:
        return None
    try:
        return DesiredProcess(
            namespace=resource.namespace,
            name=resource.name,
            uid=resource.uid,
            generation=resource.generation,
            spec=spec,
        )
    except ValidationError as exc:
        return f"cannot be sent to device {device}: {_describe(exc)}"


def _candidates(
    device: str,
    resources: Iterable[Resource],
    kept: Mapping[str, DesiredProcess],
    rejected: dict[str, str],
) -> list[tuple[int, int, str, DesiredProcess]]:
    """(0 if unchanged since `kept` else 1, encoded size, key, entry), in admission order."""
    candidates: list[tuple[int, int, str, DesiredProcess]] = []
    for resource in resources:
        process = _process(device, resource)
        if process is None:
            continue
        if isinstance(process, str):
            rejected[resource.key] = process
            continue
        first = 0 if kept.get(resource.key) == process else 1
        candidates.append((first, len(encode(process)), resource.key, process))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    return candidates


def fit_desired(
    device: str,
    resources: Iterable[Resource],
    limit: int = MAX_PAYLOAD_BYTES,
    kept: Mapping[str, DesiredProcess] | None = None,
) -> Fitted:
    """The document of `device` within the limits (see the module doc); never raises.

    `kept` holds the entries of the device's last planned document: an unchanged entry is
    admitted first, and a changed one that no longer fits keeps its previous entry if that fits.
    """
    kept = kept or {}
    rejected: dict[str, str] = {}
    candidates = _candidates(device, resources, kept, rejected)
    admitted: dict[str, DesiredProcess] = {}
    size = _EMPTY_SIZE

    def admit(key: str, process: DesiredProcess, entry_size: int) -> str | None:
        nonlocal size
        grown = size + entry_size + (1 if admitted else 0)  # entries are comma-separated
        if len(admitted) >= MAX_PROCESSES:
            return (
                f"device {device} already has {MAX_PROCESSES} processes, "
                "the most one desired document holds"
            )
        if grown > limit:
            return f"desired document for device {device} would be {grown} bytes, limit {limit}"
        admitted[key] = process
        size = grown
        return None

    for _first, entry_size, key, process in candidates:
        if key in admitted:  # the index never yields a key twice; a planner input might
            rejected[key] = f"{key} appears more than once for device {device}"
        elif (why := admit(key, process, entry_size)) is not None:
            rejected[key] = why
    for key in sorted(rejected):  # a changed entry that does not fit: the device keeps the old
        previous = kept.get(key)
        if (
            previous is not None
            and key not in admitted
            and admit(key, previous, len(encode(previous))) is None
        ):
            rejected[key] += f"; the device keeps generation {previous.generation}"
    return Fitted(make_desired(list(admitted.values())), rejected)


def build_desired(device: str, resources: Iterable[Resource]) -> Desired:
    """The desired document of `device` from its resources (invalid or unfitting ones left out)."""
    return fit_desired(device, resources).desired


class Mirror:
    """Which `desired` documents to publish; see the module doc."""

    def __init__(self, limit: int = MAX_PAYLOAD_BYTES) -> None:
        self.limit = limit  # bytes one encoded document may take
        self.observed: dict[str, str] = {}  # device -> revision the broker retains
        self.sent: dict[str, str] = {}  # device -> revision published, echo not seen yet
        self.rejected: dict[str, dict[str, str]] = {}  # device -> key -> why it is left out
        self.kept: dict[str, dict[str, DesiredProcess]] = {}  # device -> its last planned entries

    def rejection(self, device: str | None, key: str) -> str | None:
        """Why `key` was left out of `device`'s last planned document, if it was."""
        return self.rejected.get(device, {}).get(key) if device is not None else None

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
        """The document to publish for `device` now, or None when the broker has it already.

        Also records the resources left out for a limit (`rejection`, `rejected`)."""
        fitted = fit_desired(device, resources, self.limit, self.kept.get(device))
        if fitted.desired.processes:
            self.kept[device] = {p.key: p for p in fitted.desired.processes}
        else:
            self.kept.pop(device, None)
        if fitted.rejected:
            self.rejected[device] = fitted.rejected
        else:
            self.rejected.pop(device, None)
        desired = fitted.desired
        current = self.sent.get(device, self.observed.get(device))
        if desired.revision == current:
            return None
        if not desired.processes and current is None:
            return None  # nothing was ever sent: there is nothing to stop
        return desired

    def published(self, device: str, revision: str) -> None:
        """`revision` was handed to the broker for `device`."""
        self.sent[device] = revision
