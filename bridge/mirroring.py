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
  documents back before planning republishes nothing unchanged); a publish whose echo does not
  come back in time is forgotten by `expire_sent` and planned again. A device whose last resource is
  gone gets an empty document once, unless nothing was ever retained for it.
- No resource content can make a document the wire refuses. Past `MAX_PROCESSES` valid resources
  on one device, the ones after the first `MAX_PROCESSES` by namespace/name are left out. A document
  whose encoding would exceed the payload limit is not published at all: the device keeps its last
  document, and the resources that would have changed it (not in it at their generation) are
  refused. Refusals are in `Mirror.rejected` (key -> a one-line reason); `statuses` shows them as
  `Synced=False/InvalidSpec`, and `plan` returns which keys' refusals changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.config.names import is_device_name
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.validation import describe
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


def check_spec(spec: Mapping[str, object]) -> DeviceProcessSpec | str:
    """The validated spec, or a one-line description of the first problem (stable text)."""
    try:
        return DeviceProcessSpec.model_validate(spec)
    except ValidationError as exc:
        return describe(exc, root="spec")


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


def desired_processes(device: str, resources: Iterable[Resource]) -> list[DesiredProcess]:
    """The processes of `device`'s document, by namespace/name (invalid specs left out)."""
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
    return sorted(processes, key=lambda p: (p.namespace, p.name))


def build_desired(device: str, resources: Iterable[Resource]) -> Desired:
    """The desired document of `device` from its resources (invalid specs left out)."""
    return make_desired(desired_processes(device, resources)[:MAX_PROCESSES])


@dataclass(frozen=True, slots=True)
class Plan:
    """What `Mirror.plan` decided: the document to publish (None: nothing) and which resources'
    refusals appeared or went away (their status must be planned again)."""

    doc: Desired | None
    refusals_changed: frozenset[str]


class Mirror:
    """Which `desired` documents to publish; see the module doc."""

    def __init__(self, limit: int = MAX_PAYLOAD_BYTES) -> None:
        self.limit = limit
        self.observed: dict[str, str] = {}  # device -> revision the broker retains
        self.sent: dict[str, str] = {}  # device -> revision published, echo not seen yet
        self.sent_at: dict[str, float] = {}  # device -> when (monotonic) it was published
        self.rejected: dict[str, str] = {}  # resource key -> why it is not sent
        self._rejected_by_device: dict[str, frozenset[str]] = {}
        self._last_doc: dict[str, dict[str, int]] = {}  # device -> key -> generation it holds

    def observe(self, device: str, revision: str | None, doc: Desired | None = None) -> None:
        """The broker retains `revision` (its document `doc`) for `device` (None: nothing)."""
        if revision is None:
            self.observed.pop(device, None)
        else:
            self.observed[device] = revision
        if doc is not None:
            self._last_doc[device] = {p.key: p.generation for p in doc.processes}
        if revision is not None and self.sent.get(device) == revision:
            del self.sent[device]
            self.sent_at.pop(device, None)

    def reset_sent(self) -> None:
        """Forget unconfirmed publishes (after a reconnect the broker is read back again)."""
        self.sent.clear()
        self.sent_at.clear()

    def expire_sent(self, now: float, older_than: float) -> list[str]:
        """Devices whose publish was not echoed within `older_than` s: forgotten, to plan again.

        A broker may acknowledge a retained publish it then fails to store (a NATS cluster
        electing new JetStream leaders after a node died, measured): without its echo the
        document is not known to be retained, so it is published again.
        """
        late = [d for d, at in self.sent_at.items() if now - at > older_than]
        for device in late:
            self.sent.pop(device, None)
            del self.sent_at[device]
        return late

    def devices(self) -> set[str]:
        """Every device with a retained or in-flight document."""
        return set(self.observed) | set(self.sent)

    def plan(self, device: str, resources: Iterable[Resource]) -> Plan:
        """The document to publish for `device` now (None when the broker has it already, or
        when no acceptable document can be made), and the keys whose refusal changed."""
        processes = desired_processes(device, resources)
        refused: dict[str, str] = {}
        for extra in processes[MAX_PROCESSES:]:
            refused[extra.key] = (
                f"device {device} has {len(processes)} DeviceProcesses, at most {MAX_PROCESSES} "
                f"per device: this one is past the {MAX_PROCESSES}th by namespace/name, not sent"
            )
        processes = processes[:MAX_PROCESSES]
        candidate = make_desired(processes)
        size = len(encode(candidate))
        desired: Desired | None = candidate
        if size > self.limit:
            held = self._last_doc.get(device, {})
            changing = [p for p in processes if held.get(p.key) != p.generation] or processes
            for process in changing:
                refused[process.key] = (
                    f"desired document for device {device} would be {size} bytes, limit "
                    f"{self.limit}: not sent, the device keeps its last document"
                )
            desired = None
        changed = self._set_refusals(device, refused)
        if desired is None:
            return Plan(None, changed)
        current = self.sent.get(device, self.observed.get(device))
        if desired.revision == current:
            return Plan(None, changed)
        if not desired.processes and current is None:
            return Plan(None, changed)  # nothing was ever sent: there is nothing to stop
        return Plan(desired, changed)

    def published(self, device: str, doc: Desired, now: float = 0.0) -> None:
        """`doc` was handed to the broker for `device` at `now` (monotonic)."""
        self.sent[device] = doc.revision
        self.sent_at[device] = now
        self._last_doc[device] = {p.key: p.generation for p in doc.processes}

    def _set_refusals(self, device: str, refused: dict[str, str]) -> frozenset[str]:
        before = self._rejected_by_device.get(device, frozenset())
        changed = {k for k in before if k not in refused}
        for key in before - refused.keys():
            self.rejected.pop(key, None)
        for key, why in refused.items():
            if self.rejected.get(key) != why:
                changed.add(key)
            self.rejected[key] = why
        if refused:
            self._rejected_by_device[device] = frozenset(refused)
        else:
            self._rejected_by_device.pop(device, None)
        return frozenset(changed)
