"""The control-plane interface the bridge core is written against; both backends implement it.

A backend is an informer: `run(on_change)` lists every DeviceProcess, marks itself synced, then
watches, and calls `on_change(key)` for each added, modified or deleted resource (level-based:
the callback carries only the key; the core reads the current object with `get`). Writes are
`patch_status` (a JSON merge-patch of `status`, applied to the status subresource) and `emit_event`.
Only the leader writes (`leading`); with shards, only the holder of a device's shard (`may_write`). Errors are the bridge's `ConflictError`, `NotFoundError` and `TransientError(retry_after)`.

Keys are `"<namespace>/<name>"`. `Resource.spec` and `Resource.status` are the raw stored
mappings (the core validates the spec with `config.resource.DeviceProcessSpec`, so an invalid spec
is reported on the resource's own status instead of being dropped silently).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from devicefabric.config.fleet import DEVICE_KIND, SET_KIND
from devicefabric.config.resource import API_VERSION

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True, slots=True)
class OwnerRef:
    """One `metadata.ownerReferences` entry (the fields the bridge reads and writes)."""

    kind: str
    name: str
    uid: str

    def to_wire(self) -> dict[str, object]:
        """The entry as stored: the owner is the controller of what it owns."""
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }


@dataclass(frozen=True, slots=True)
class OwnedProcess:
    """What a DeviceProcessSet writes into a DeviceProcess it owns (`FleetPlane.create_process`,
    `update_process`)."""

    spec: Mapping[str, object]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Resource:
    """One stored object (a DeviceProcess, or with the fleet kinds a Device or a
    DeviceProcessSet) as the control plane stores it (read-only snapshot). A cluster-scoped
    object (Device) has the namespace "" and its name as key."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, object]
    status: Mapping[str, object] = field(default_factory=dict)
    creation_timestamp: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[OwnerRef, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def device(self) -> str | None:
        """`spec.deviceName` when it is a string (validity is checked by the core)."""
        value = self.spec.get("deviceName")
        return value if isinstance(value, str) else None


class ControlPlane(Protocol):
    """What the bridge core needs from a control plane."""

    @property
    def synced(self) -> asyncio.Event:
        """Set once the initial list is in the cache (drives `/readyz`)."""
        ...

    @property
    def leading(self) -> asyncio.Event:
        """Set while this replica may write status, Events and `desired` (local: always set).

        Non-leaders keep their caches and device trackers warm, so a takeover writes nothing
        that did not change.
        """
        ...

    @property
    def not_leading(self) -> str | None:
        """Why this replica does not lead (e.g. the last lease error), for `/readyz`; None if it does."""
        ...

    def may_write(self, device: str | None) -> bool:
        """True while this replica may write for `device`: leading, and with `--shards` > 1
        holding the device's shard (`bridge.sharding`) within its renew deadline."""
        ...

    @property
    def gains(self) -> int:
        """How often this replica gained write access to more devices (a shard) after it first
        led; the bridge reconciles everything again when it moves (one leader: always 0)."""
        ...

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shards this replica holds with `--shards` > 1, for `/readyz`; None otherwise."""
        ...

    async def run(self, on_change: Callable[[str], None]) -> None:
        """List, then watch until cancelled; call `on_change(key)` for every change."""
        ...

    def get(self, key: str) -> Resource | None:
        """The cached resource, or None once deleted."""
        ...

    def resources(self) -> Iterable[Resource]:
        """Every cached resource."""
        ...

    async def patch_status(self, key: str, patch: Mapping[str, object]) -> None:
        """Merge-patch `status` of `key` with `patch` (a dict of status fields, None deletes)."""
        ...

    async def emit_event(self, key: str, type_: EventType, reason: str, message: str) -> None:
        """Record an Event about `key` (reporting controller: the bridge)."""
        ...


class SingleWriter:
    """The write-access half of `ControlPlane` for a plane that alone writes its store.

    No lease and no shards: the plane leads while `_leading` is set (always, unless a test
    withholds it), may then write every device, and never gains a shard. The subclass owns
    `_synced` and `_leading` and says itself why it would not lead (`not_leading`).
    """

    _synced: asyncio.Event
    _leading: asyncio.Event

    @property
    def synced(self) -> asyncio.Event:
        return self._synced

    @property
    def leading(self) -> asyncio.Event:
        return self._leading

    def may_write(self, device: str | None) -> bool:  # noqa: ARG002 - one writer, every device
        return self._leading.is_set()

    @property
    def gains(self) -> int:
        return 0

    @property
    def shards(self) -> tuple[int, ...] | None:
        return None


class FleetPlane(Protocol):
    """What the fleet controller (`bridge.fleets`) needs besides `ControlPlane`: Devices
    (cluster-scoped, keyed by name) and DeviceProcessSets (keyed `<namespace>/<name>`), and the
    writes that create, switch and delete the DeviceProcesses a set owns.

    `run_fleet(on_change)` lists both kinds, sets `fleet_synced`, then watches, calling
    `on_change(kind, key)` (kind `Device` or `DeviceProcessSet`) for every change. Writes of
    DeviceProcesses are adopted into the `ControlPlane` cache at once and announced through its
    own `on_change`, so a reconcile that runs next sees them. A create of something that exists
    raises `ConflictError`; a delete of something gone is done.
    """

    @property
    def fleet_synced(self) -> asyncio.Event: ...

    @property
    def collects_garbage(self) -> bool:
        """True when the store deletes owned objects with their owner (Kubernetes); False when
        the bridge must delete a deleted set's processes itself (local)."""
        ...

    async def run_fleet(self, on_change: Callable[[str, str], None]) -> None: ...

    def device(self, name: str) -> Resource | None: ...

    def devices(self) -> Iterable[Resource]: ...

    def process_set(self, key: str) -> Resource | None: ...

    def process_sets(self) -> Iterable[Resource]: ...

    async def create_device(self, name: str) -> None: ...

    async def patch_device_status(self, name: str, patch: Mapping[str, object]) -> None: ...

    async def patch_set_status(self, key: str, patch: Mapping[str, object]) -> None: ...

    async def create_process(
        self, namespace: str, name: str, process: OwnedProcess, owner: OwnerRef
    ) -> None: ...

    async def update_process(self, key: str, process: OwnedProcess) -> None:
        """Replace spec and labels; merge the annotations into the existing ones."""
        ...

    async def delete_process(self, key: str) -> None: ...


class Informs(Protocol):
    """An informer of one kind: what `InformedFleet` runs (`ControlPlane` is one too)."""

    @property
    def synced(self) -> asyncio.Event: ...

    async def run(self, on_change: Callable[[str], None]) -> None: ...


class InformedFleet:
    """What both `FleetPlane` backends share: a Device and a DeviceProcessSet informer, run
    together by `run_fleet` (calling `on_change(kind, key)`), and `fleet_synced` set once both
    have listed."""

    def __init__(self, devices: Informs, sets: Informs, *, plane: str) -> None:
        self._informers = (devices, sets)
        self._plane = plane  # names the informer tasks
        self._synced = asyncio.Event()

    @property
    def fleet_synced(self) -> asyncio.Event:
        return self._synced

    async def run_fleet(self, on_change: Callable[[str, str], None]) -> None:
        devices, sets = self._informers
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                devices.run(lambda key: on_change(DEVICE_KIND, key)), name=f"{self._plane}-devices"
            )
            tg.create_task(
                sets.run(lambda key: on_change(SET_KIND, key)), name=f"{self._plane}-sets"
            )
            await devices.synced.wait()
            await sets.synced.wait()
            self._synced.set()
