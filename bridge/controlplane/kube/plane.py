"""The Kubernetes control plane: DeviceProcesses from the API server, status and Events back.

`KubeControlPlane` implements `controlplane.base.ControlPlane` over the official client (through
the one thread seam in `kube.client`; why that client is explained there). `run(on_change)` runs
two tasks: the informer and the leader elector (`leasing`; with `--shards` > 1 the shard
elector, `sharding`); a `ConfigError` from either (a Lease namespace that does not exist)
ends `run` as itself. `may_write(device)` is `leading`, or with shards whether this replica holds
the device's shard; with shards, `patch_status` and `emit_event` count as writes under way of
their shard (a release waits for them), a status patch for a shard not held is refused
(`TransientError`: the queue retries, and the writer then finds it may not write) and an Event
for one is dropped (best effort, and retrying it would hold up the Events behind it).

The informer (`informing`) lists DeviceProcesses (all namespaces, or `--namespace`) and
watches them: level-based, no duplicates, 410 relists that diff, back-off honouring Retry-After.
`fleet` informs Devices and DeviceProcessSets the same way and makes the writes of
the fleet controller.

Writes: `patch_status` sends `{"status": patch}` as `application/merge-patch+json` to the
`/status` subresource (spec, metadata and generation cannot be touched from there) and adopts the
answer into the cache unless a newer event got there first. A 409 re-reads the resource into the
cache, then raises `ConflictError` for the work queue to retry on fresh state. `emit_event`
creates an `events.k8s.io/v1` Event with `reportingController: devicefabric.io/bridge` and
`reportingInstance` the pod name. Only `bridge/controlplane/kube/` import `kubernetes`.

Invariant: the cache is read and written only on the event loop (threads do HTTP only), so
`get`/`resources` need no lock and always show one consistent state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from devicefabric.bridge.controlplane.base import EventType, Resource
from devicefabric.bridge.controlplane.kube.client import MERGE_PATCH, KubeClient, micro_time
from devicefabric.bridge.controlplane.kube.fleet import KubeFleet, collection, plain
from devicefabric.bridge.controlplane.kube.informing import Informer
from devicefabric.bridge.controlplane.kube.leasing import LeaderElector
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.controlplane.kube.sharding import ShardElector
from devicefabric.bridge.errors import ConflictError, ControlPlaneError
from devicefabric.config.errors import ConfigError
from devicefabric.config.resource import API_VERSION, KIND, PLURAL

log = logging.getLogger("devicefabric.bridge.kube")

REPORTING_CONTROLLER: Final = "devicefabric.io/bridge"
EVENT_ACTION: Final = "UpdateStatus"  # what the bridge did about the object
MAX_NOTE: Final = 1024  # events.k8s.io note limit


def _split(key: str) -> tuple[str, str]:
    namespace, sep, name = key.partition("/")
    if not (sep and namespace and name):
        raise ControlPlaneError(f"not a <namespace>/<name> key: {key!r}")
    return namespace, name


class KubeControlPlane:
    """DeviceProcesses in a Kubernetes API server; see the module doc."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        settings: KubeSettings | None = None,
        client: KubeClient | None = None,
    ) -> None:
        self.settings = settings if settings is not None else KubeSettings.from_env(namespace)
        self._client = (
            client
            if client is not None
            else KubeClient.from_environment(self.settings.request_timeout)
        )
        self._leading = asyncio.Event()
        self._informer = Informer(
            self._client, self.settings, self._collection(self.settings.namespace), "resources"
        )
        self._elector: LeaderElector | ShardElector = (
            ShardElector(self._client, self.settings, self._leading)
            if self.settings.shards > 1
            else LeaderElector(self._client, self.settings, self._leading)
        )
        self.fleet = KubeFleet(self._client, self.settings, self._informer)

    @property
    def relists(self) -> int:
        """How often the DeviceProcess informer listed (1 + one per 410 or failed list)."""
        return self._informer.relists

    @property
    def watches(self) -> int:
        """How many watch streams the DeviceProcess informer opened."""
        return self._informer.watches

    @property
    def _cache(self) -> dict[str, Resource]:
        return self._informer.cache

    @property
    def synced(self) -> asyncio.Event:
        return self._informer.synced

    @property
    def leading(self) -> asyncio.Event:
        return self._leading

    @property
    def not_leading(self) -> str | None:
        return None if self._leading.is_set() else self._elector.not_leading

    def may_write(self, device: str | None) -> bool:
        """Leading (one Lease), or holding `device`'s shard within its renew deadline."""
        if isinstance(self._elector, ShardElector):
            return self._elector.may_write(device)
        return self._leading.is_set()

    @property
    def gains(self) -> int:
        """Shards acquired so far (one Lease: 0); the bridge resyncs when it moves."""
        return self._elector.gains if isinstance(self._elector, ShardElector) else 0

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shards held now (`--shards` > 1), for `/readyz`; None with one Lease."""
        if isinstance(self._elector, ShardElector):
            return tuple(self._elector.held())
        return None

    @property
    def shard_elector(self) -> ShardElector | None:
        """The shard Leases' elector with `--shards` > 1, for `/readyz`, metrics and tests."""
        return self._elector if isinstance(self._elector, ShardElector) else None

    def _writing(self, key: str) -> contextlib.AbstractContextManager[None]:
        """A write of `key`: counted against its shard (refused when not held), or no-op."""
        if isinstance(self._elector, ShardElector):
            resource = self._cache.get(key)
            return self._elector.writing(resource.device if resource is not None else None)
        return contextlib.nullcontext()

    @property
    def resource_version(self) -> str | None:
        """The informer's position: the last list, event or bookmark it applied."""
        return self._informer.rv

    def get(self, key: str) -> Resource | None:
        return self._cache.get(key)

    def resources(self) -> Iterable[Resource]:
        return list(self._cache.values())

    async def run(self, on_change: Callable[[str], None]) -> None:
        """Inform and elect until cancelled (a leader releases its Lease on the way out)."""
        where = self.settings.namespace or "all namespaces"
        log.info(
            "kube control plane: %s, lease %s/%s%s as %s",
            where,
            self.settings.lease_namespace,
            self.settings.lease_name,
            f"-<0..{self.settings.shards - 1}>" if self.settings.shards > 1 else "",
            self.settings.identity,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._informer.run(on_change), name="kube-informer")
                tg.create_task(self._elector.run(), name="kube-leader-election")
        except BaseExceptionGroup as group:
            configuration = group.subgroup(ConfigError)  # e.g. a missing Lease namespace
            if configuration is not None:
                raise configuration.exceptions[0] from None
            raise
        finally:
            self._client.close()

    def _collection(self, namespace: str | None) -> str:
        return collection(PLURAL, namespace)

    # -- writes --------------------------------------------------------------------------------
    def _path(self, namespace: str, name: str, subresource: str = "") -> str:
        path = f"{self._collection(namespace)}/{name}"
        return f"{path}/{subresource}" if subresource else path

    async def patch_status(self, key: str, patch: Mapping[str, object]) -> None:
        namespace, name = _split(key)
        before = self._cache.get(key)
        try:
            with self._writing(key):
                written = await self._client.call(
                    "PATCH",
                    self._path(namespace, name, "status"),
                    body={"status": plain(patch)},
                    content_type=MERGE_PATCH,
                )
        except ConflictError:
            with contextlib.suppress(ControlPlaneError):
                self._informer.adopt(
                    key, before, await self._client.call("GET", self._path(namespace, name))
                )
            raise
        self._informer.adopt(key, before, written)

    async def emit_event(self, key: str, type_: EventType, reason: str, message: str) -> None:
        namespace, name = _split(key)
        resource = self._cache.get(key)
        device = resource.device if resource is not None else None
        if self.shard_elector is not None and not self.may_write(device):
            # The shard moved (or leadership was lost) since the status write this Event tells
            # of: best effort, like every Event; retrying it would block the Events behind it.
            log.info("event %s dropped: this replica no longer writes for it", reason,
                     extra={"resource": key})  # fmt: skip
            return
        regarding: dict[str, str] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "namespace": namespace,
            "name": name,
        }
        if resource is not None:
            regarding |= {"uid": resource.uid, "resourceVersion": resource.resource_version}
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": f"{name[:236]}.{time.time_ns():x}", "namespace": namespace},
            "eventTime": micro_time(),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.settings.identity,
            "action": EVENT_ACTION,
            "reason": reason[:128],
            "note": message[:MAX_NOTE],
            "type": type_,
            "regarding": regarding,
        }
        with self._writing(key):
            await self._client.call(
                "POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=body
            )
