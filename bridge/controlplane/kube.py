"""The Kubernetes control plane: DeviceProcesses from the API server, status and Events back.

`KubeControlPlane` implements `controlplane.base.ControlPlane` over the official client (through
the one thread seam in `kube_client`; why that client is explained there). `run(on_change)` runs
two tasks: the informer and the leader elector (`kube_leasing`; with `--shards` > 1 the shard
elector, `kube_sharding`); a `ConfigError` from either (a Lease namespace that does not exist)
ends `run` as itself. `may_write(device)` is `leading`, or with shards whether this replica holds
the device's shard; with shards, `patch_status` and `emit_event` count as writes under way of
their shard (a release waits for them), a status patch for a shard not held is refused
(`TransientError`: the queue retries, and the writer then finds it may not write) and an Event
for one is dropped (best effort, and retrying it would hold up the Events behind it).

The informer lists DeviceProcesses (pages of `page_size`; all namespaces, or `--namespace`) into
its cache, sets `synced`, then watches from the list's resourceVersion with bookmarks, and calls
`on_change(key)` for every change it applies. Level-based and without duplicates:

- an event whose resourceVersion equals the cached one is not a change (our own write's echo,
  already adopted from the PATCH answer) and calls nothing; an echo that beats the PATCH answer
  is an ordinary change, which the core's level-based reconcile finds nothing to write for;
- a watch that ends (server timeout, cut connection, 5xx) is reopened from the last
  resourceVersion seen, bookmarks included, so nothing is missed and nothing replayed;
- `410 Expired` (history compacted) lists again and diffs against the cache: `on_change` only for
  keys added, changed (other resourceVersion) or vanished, so a re-list writes nothing by itself;
- failures back off exponentially (capped), honouring `Retry-After`.

Writes: `patch_status` sends `{"status": patch}` as `application/merge-patch+json` to the
`/status` subresource (spec, metadata and generation cannot be touched from there) and adopts the
answer into the cache unless a newer event got there first. A 409 re-reads the resource into the
cache, then raises `ConflictError` for the work queue to retry on fresh state. `emit_event`
creates an `events.k8s.io/v1` Event with `reportingController: devicefabric.io/bridge` and
`reportingInstance` the pod name. Only `bridge/controlplane/kube*.py` import `kubernetes`.

Invariant: the cache is read and written only on the event loop (threads do HTTP only), so
`get`/`resources` need no lock and always show one consistent state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from devicefabric.bridge.controlplane.base import EventType, Resource
from devicefabric.bridge.controlplane.kube_client import (
    MERGE_PATCH,
    ExpiredError,
    KubeClient,
    map_status,
    micro_time,
)
from devicefabric.bridge.controlplane.kube_leasing import LeaderElector
from devicefabric.bridge.controlplane.kube_settings import KubeSettings
from devicefabric.bridge.controlplane.kube_sharding import ShardElector
from devicefabric.bridge.errors import ConflictError, ControlPlaneError, TransientError
from devicefabric.config.errors import ConfigError
from devicefabric.config.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("devicefabric.bridge.kube")

REPORTING_CONTROLLER: Final = "devicefabric.io/bridge"
EVENT_ACTION: Final = "UpdateStatus"  # what the bridge did about the object
MAX_NOTE: Final = 1024  # events.k8s.io note limit
MIN_PRODUCTIVE: Final = 1.0  # s: a watch that ends sooner with no event in it backs off


def to_resource(obj: Mapping[str, Any]) -> Resource | None:
    """The cache entry for a DeviceProcess object; None when its metadata is unusable."""
    meta = obj.get("metadata") or {}
    namespace, name, rv = meta.get("namespace"), meta.get("name"), meta.get("resourceVersion")
    if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(rv, str)):
        return None
    spec, status = obj.get("spec"), obj.get("status")
    return Resource(
        namespace=namespace,
        name=name,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        resource_version=rv,
        spec=spec if isinstance(spec, dict) else {},
        status=status if isinstance(status, dict) else {},
        creation_timestamp=str(meta.get("creationTimestamp", "")),
    )


def _plain(value: object) -> object:
    """Mappings and sequences as JSON-ready dicts and lists (the client serializes only those)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
        self._synced = asyncio.Event()
        self._leading = asyncio.Event()
        self._cache: dict[str, Resource] = {}
        self._rv: str | None = None  # the informer's position: last list, event or bookmark
        self._elector: LeaderElector | ShardElector = (
            ShardElector(self._client, self.settings, self._leading)
            if self.settings.shards > 1
            else LeaderElector(self._client, self.settings, self._leading)
        )
        self.relists = 0  # how often the informer listed (1 + one per 410 or failed list)
        self.watches = 0  # how many watch streams it opened

    @property
    def synced(self) -> asyncio.Event:
        return self._synced

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
        return self._rv

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
                tg.create_task(self._inform(on_change), name="kube-informer")
                tg.create_task(self._elector.run(), name="kube-leader-election")
        except BaseExceptionGroup as group:
            configuration = group.subgroup(ConfigError)  # e.g. a missing Lease namespace
            if configuration is not None:
                raise configuration.exceptions[0] from None
            raise
        finally:
            self._client.close()

    # -- informer ------------------------------------------------------------------------------
    def _collection(self, namespace: str | None) -> str:
        scope = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}"

    async def _inform(self, on_change: Callable[[str], None]) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            events = 0
            retry_after: float | None = None
            try:
                if self._rv is None:
                    self._rv = await self._relist(on_change)
                    self._synced.set()
                events = await self._watch(self._rv, on_change)
            except ExpiredError as exc:
                if self._rv is not None:  # the watch's history is gone: list again at once
                    log.info("watch expired (%s): listing again", exc)
                    self._rv = None
                    continue
                log.warning("informer: the list expired (%s)", exc)  # a paged list: back off
            except ControlPlaneError as exc:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                log.warning("informer: %s (resuming from resourceVersion %s)", exc, self._rv)
            if retry_after is None and (events or time.monotonic() - started >= MIN_PRODUCTIVE):
                failures = 0  # a stream that worked for a while: reopen it at once
                continue
            delay = min(self.settings.backoff_max, self.settings.backoff_initial * 2**failures)
            failures += 1
            await asyncio.sleep(max(delay, retry_after or 0.0))

    def _notify(self, on_change: Callable[[str], None], key: str) -> None:
        try:
            on_change(key)
        except Exception:
            log.exception("on_change failed", extra={"resource": key})

    async def _relist(self, on_change: Callable[[str], None]) -> str:
        """List everything, replace the cache, call `on_change` for what differs; the list's RV."""
        path = self._collection(self.settings.namespace)
        items: list[Any] = []
        rv: str | None = None
        token: str | None = None
        while True:
            query = [("limit", str(self.settings.page_size))] + (
                [("continue", token)] if token else []
            )
            page = await self._client.call("GET", path, query=query)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            rv = rv or meta.get("resourceVersion")
            token = meta.get("continue") or None
            if token is None:
                break
        if not rv:
            raise TransientError(f"GET {path}: the list carries no resourceVersion")
        self.relists += 1
        fresh = {r.key: r for r in map(to_resource, items) if r is not None}
        changed = [
            k
            for k, r in fresh.items()
            if (old := self._cache.get(k)) is None or old.resource_version != r.resource_version
        ]
        vanished = [k for k in self._cache if k not in fresh]
        self._cache = fresh
        log.info(
            "listed %d resources at resourceVersion %s: %d changed, %d gone",
            len(fresh),
            rv,
            len(changed),
            len(vanished),
        )
        for key in (*changed, *vanished):
            self._notify(on_change, key)
        return str(rv)

    async def _watch(self, rv: str, on_change: Callable[[str], None]) -> int:
        """Apply one watch stream's events from `rv`, advancing `self._rv`; the event count."""
        timeout = self.settings.watch_timeout * random.uniform(1, 2)  # noqa: S311 - spread, not crypto
        query = [
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(timeout))),
        ]
        self.watches += 1
        count = 0
        stream = self._client.watch(self._collection(self.settings.namespace), query, timeout)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                count += 1
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise map_status(code, f"watch: {obj.get('message', '')}", None)
                if kind in ("ADDED", "MODIFIED"):
                    self._apply(obj, on_change)
                elif kind == "DELETED":
                    self._delete(obj, on_change)
                elif kind != "BOOKMARK":
                    continue
                self._rv = (obj.get("metadata") or {}).get("resourceVersion") or self._rv
        return count

    def _apply(self, obj: Mapping[str, Any], on_change: Callable[[str], None]) -> None:
        resource = to_resource(obj)
        if resource is None:
            return
        cached = self._cache.get(resource.key)
        if cached is not None and cached.resource_version == resource.resource_version:
            return  # our own write's echo, already adopted
        self._cache[resource.key] = resource
        self._notify(on_change, resource.key)

    def _delete(self, obj: Mapping[str, Any], on_change: Callable[[str], None]) -> None:
        resource = to_resource(obj)
        if resource is not None and self._cache.pop(resource.key, None) is not None:
            self._notify(on_change, resource.key)

    def _adopt(self, key: str, before: Resource | None, obj: Mapping[str, Any]) -> None:
        """Cache an object we read or wrote, unless a watch event replaced `before` meanwhile."""
        if before is not None and self._cache.get(key) is before:
            fresh = to_resource(obj)
            if fresh is not None:
                self._cache[key] = fresh

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
                    body={"status": _plain(patch)},
                    content_type=MERGE_PATCH,
                )
        except ConflictError:
            with contextlib.suppress(ControlPlaneError):
                self._adopt(
                    key, before, await self._client.call("GET", self._path(namespace, name))
                )
            raise
        self._adopt(key, before, written)

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
