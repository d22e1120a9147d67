"""The fleet kinds on the local control plane: Devices and DeviceProcessSets under the state dir.

`LocalFleet` implements `controlplane.base.FleetPlane` for `devicefabric up` and
`bridge run --control-plane local`. Each kind is a `LocalStore` of its own with its own lock,
revision counter and journal (`<state-dir>/devices/`, cluster-scoped, and `<state-dir>/sets/`),
informed by a `LocalControlPlane` over that store, so everything the DeviceProcess informer
guarantees (journal tailing, inotify, retries, forward-only cache) holds for them too.

Writes of the DeviceProcesses a set owns go to the DeviceProcess store and are adopted into the
DeviceProcess plane's cache at once (announced through its `on_change`), so the next reconcile
sees them. There is no garbage collector here: `collects_garbage` is False, and the fleet
controller deletes a deleted set's processes itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

from devicefabric.bridge.controlplane.base import (
    InformedFleet,
    OwnedProcess,
    OwnerRef,
    Resource,
)
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.controlplane.local.userfiles import Manifest
from devicefabric.bridge.errors import TransientError
from devicefabric.config.fleet import DEVICE_KIND, SET_KIND
from devicefabric.config.resource import KIND

if TYPE_CHECKING:
    from devicefabric.bridge.controlplane.local.plane import LocalControlPlane

DEVICES_DIR: Final = "devices"
SETS_DIR: Final = "sets"


def device_store(state_dir: Path) -> LocalStore:
    return LocalStore(
        state_dir / DEVICES_DIR, cluster_scoped=True, kind="device", kind_name=DEVICE_KIND
    )


def set_store(state_dir: Path) -> LocalStore:
    return LocalStore(state_dir / SETS_DIR, kind="deviceprocessset", kind_name=SET_KIND)


class LocalFleet(InformedFleet):
    """Devices and DeviceProcessSets in a state directory; see the module doc."""

    def __init__(
        self,
        state_dir: Path,
        processes: LocalControlPlane,
        *,
        poll_interval: float,
        notify: bool,
    ) -> None:
        from devicefabric.bridge.controlplane.local.plane import LocalControlPlane  # noqa: PLC0415

        def plane(store: LocalStore) -> LocalControlPlane:
            return LocalControlPlane(
                store.root, store=store, fleet=False, poll_interval=poll_interval, notify=notify
            )

        self._processes = processes
        self._devices = plane(device_store(state_dir))
        self._sets = plane(set_store(state_dir))
        super().__init__(self._devices, self._sets, plane="local")

    @property
    def collects_garbage(self) -> bool:
        return False

    async def run_fleet(self, on_change: Callable[[str, str], None]) -> None:
        for store in (self._devices.store, self._sets.store):
            store.root.mkdir(parents=True, exist_ok=True)  # inotify watches the directory
        await super().run_fleet(on_change)

    def device(self, name: str) -> Resource | None:
        return self._devices.get(name)

    def devices(self) -> Iterable[Resource]:
        return self._devices.resources()

    def process_set(self, key: str) -> Resource | None:
        return self._sets.get(key)

    def process_sets(self) -> Iterable[Resource]:
        return self._sets.resources()

    async def create_device(self, name: str) -> None:
        manifest = Manifest("", name, {}, kind=DEVICE_KIND)
        await _io(self._devices.store.create, manifest)
        await self._devices.adopt(name)

    async def patch_device_status(self, name: str, patch: Mapping[str, object]) -> None:
        await self._devices.patch_status(name, patch)

    async def patch_set_status(self, key: str, patch: Mapping[str, object]) -> None:
        await self._sets.patch_status(key, patch)

    async def create_process(
        self, namespace: str, name: str, process: OwnedProcess, owner: OwnerRef
    ) -> None:
        manifest = Manifest(
            namespace,
            name,
            dict(process.spec),
            dict(process.labels),
            dict(process.annotations),
            kind=KIND,
            owners=(owner.to_wire(),),
        )
        await _io(self._processes.store.create, manifest)
        await self._processes.adopt(manifest.key)

    async def update_process(self, key: str, process: OwnedProcess) -> None:
        store = self._processes.store
        await _io(store.update, key, process.spec, process.labels, process.annotations)
        await self._processes.adopt(key)

    async def delete_process(self, key: str) -> None:
        await _io(self._processes.store.delete, key)
        await self._processes.adopt(key)


P = ParamSpec("P")
T = TypeVar("T")


async def _io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a store call in a thread; an `OSError` is transient (the queue retries)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise TransientError(f"cannot write the state directory: {exc}") from exc
