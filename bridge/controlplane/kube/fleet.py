"""The fleet kinds in Kubernetes: Devices and DeviceProcessSets informed, and the fleet's writes.

`KubeFleet` implements `controlplane.base.FleetPlane`. `run_fleet` runs two `Informer`s, Devices
(cluster-scoped) and DeviceProcessSets (all namespaces, or `--namespace`), and sets
`fleet_synced` once both listed. Writes (each one HTTP request, errors mapped by `kube.client`):

- `create_device`: POST of a bare Device (the operator's labels come with an operator's create
  or `kubectl label`); 409 AlreadyExists is `ConflictError`.
- `patch_device_status` / `patch_set_status`: merge-patch of the `/status` subresource.
- `create_process`: POST of a DeviceProcess with an ownerReference to its set (`controller: true`;
  Kubernetes' garbage collector deletes it with the set, so `collects_garbage` is True);
  `update_process`: merge-patch of `spec` and `metadata.labels`; `delete_process`: DELETE (404 is
  done). The answers are adopted into the DeviceProcess informer's cache at once and announced
  through its `on_change`, so the next reconcile sees them, and their watch echoes are no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from devicefabric.bridge.controlplane.base import (
    InformedFleet,
    OwnedProcess,
    OwnerRef,
    Resource,
)
from devicefabric.bridge.controlplane.kube.client import MERGE_PATCH, KubeClient
from devicefabric.bridge.controlplane.kube.informing import Informer
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.errors import ConflictError, ControlPlaneError, NotFoundError
from devicefabric.config.fleet import DEVICE_KIND, DEVICE_PLURAL, SET_PLURAL
from devicefabric.config.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION


def collection(plural: str, namespace: str | None) -> str:
    """The URL of a collection of our group (`namespace` None: cluster-wide, or all namespaces)."""
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{GROUP}/{VERSION}{scope}/{plural}"


def _split(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


class KubeFleet(InformedFleet):
    """Devices and DeviceProcessSets in a Kubernetes API server; see the module doc."""

    def __init__(self, client: KubeClient, settings: KubeSettings, processes: Informer) -> None:
        self._client = client
        self._processes = processes
        self._devices = Informer(client, settings, collection(DEVICE_PLURAL, None), "devices")
        self._sets = Informer(
            client, settings, collection(SET_PLURAL, settings.namespace), "deviceprocesssets"
        )
        super().__init__(self._devices, self._sets, plane="kube")

    @property
    def collects_garbage(self) -> bool:
        return True

    def device(self, name: str) -> Resource | None:
        return self._devices.cache.get(name)

    def devices(self) -> Iterable[Resource]:
        return list(self._devices.cache.values())

    def process_set(self, key: str) -> Resource | None:
        return self._sets.cache.get(key)

    def process_sets(self) -> Iterable[Resource]:
        return list(self._sets.cache.values())

    async def create_device(self, name: str) -> None:
        body = {"apiVersion": API_VERSION, "kind": DEVICE_KIND, "metadata": {"name": name}}
        answer = await self._client.call("POST", collection(DEVICE_PLURAL, None), body=body)
        self._devices.written(name, answer)

    async def patch_device_status(self, name: str, patch: Mapping[str, object]) -> None:
        await self._patch_status(self._devices, name, collection(DEVICE_PLURAL, None), patch)

    async def patch_set_status(self, key: str, patch: Mapping[str, object]) -> None:
        namespace, _ = _split(key)
        await self._patch_status(self._sets, key, collection(SET_PLURAL, namespace), patch)

    async def _patch_status(
        self, informer: Informer, key: str, where: str, patch: Mapping[str, object]
    ) -> None:
        """A status merge-patch made against the cached resourceVersion: a cache that lags
        (another replica wrote since, e.g. before a shard moved here) gets 409, is read again
        and the queue retries on it, so a write is never repeated as a no-op."""
        cached = informer.cache.get(key)
        path = f"{where}/{key.rpartition('/')[2]}"
        body: dict[str, Any] = {"status": plain(patch)}
        if cached is not None:
            body["metadata"] = {"resourceVersion": cached.resource_version}
        try:
            answer = await self._client.call(
                "PATCH", f"{path}/status", body=body, content_type=MERGE_PATCH
            )
        except ConflictError:
            with contextlib.suppress(ControlPlaneError):
                informer.adopt_newer(key, await self._client.call("GET", path))
            raise
        informer.adopt_newer(key, answer)

    async def create_process(
        self, namespace: str, name: str, process: OwnedProcess, owner: OwnerRef
    ) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(process.labels),
                "annotations": dict(process.annotations),
                "ownerReferences": [owner.to_wire()],
            },
            "spec": plain(process.spec),
        }
        answer = await self._client.call("POST", collection(PLURAL, namespace), body=body)
        self._processes.written(f"{namespace}/{name}", answer)

    async def update_process(self, key: str, process: OwnedProcess) -> None:
        namespace, name = _split(key)
        cached = self._processes.cache.get(key)
        spec = process.spec
        gone = {k: None for k in (cached.spec if cached is not None else {}) if k not in spec}
        meta = {"labels": dict(process.labels), "annotations": dict(process.annotations)}
        body = {"metadata": meta, "spec": {**plain(spec), **gone}}
        answer = await self._client.call(
            "PATCH", f"{collection(PLURAL, namespace)}/{name}", body=body, content_type=MERGE_PATCH
        )
        self._processes.written(key, answer)

    async def delete_process(self, key: str) -> None:
        namespace, name = _split(key)
        with contextlib.suppress(NotFoundError):  # gone already: done
            await self._client.call("DELETE", f"{collection(PLURAL, namespace)}/{name}")
        self._processes.written(key, None)


def plain(value: object) -> Any:
    """Mappings and sequences as JSON-ready dicts and lists (the client serializes only those)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
