"""One informer over one Kubernetes collection: list, then watch, into a cache of `Resource`s.

`Informer(client, settings, collection)` lists `collection` (pages of `page_size`) into `cache`,
sets `synced`, then watches from the list's resourceVersion with bookmarks, and calls
`on_change(key)` for every change it applies. Level-based and without duplicates:

- an event whose resourceVersion equals the cached one is not a change (our own write's echo,
  already adopted from the write's answer) and calls nothing; an echo that beats the answer is an
  ordinary change, which the core's level-based reconcile finds nothing to write for;
- a watch that ends (server timeout, cut connection, 5xx) is reopened from the last
  resourceVersion seen, bookmarks included, so nothing is missed and nothing replayed;
- `410 Expired` (history compacted) lists again and diffs against the cache: `on_change` only for
  keys added, changed (other resourceVersion) or vanished, so a re-list writes nothing by itself;
- failures back off exponentially (capped), honouring `Retry-After`.

The control plane runs one per kind (DeviceProcesses; with the fleet kinds, Devices and
DeviceProcessSets). Invariant: the cache is read and written only on the event loop (threads do
HTTP only), so readers need no lock and always see one consistent state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from devicefabric.bridge.controlplane.base import OwnerRef, Resource
from devicefabric.bridge.controlplane.kube.client import ExpiredError, KubeClient, map_status
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.errors import ControlPlaneError, NotFoundError, TransientError
from devicefabric.runtime.backoff import retry_delay

log = logging.getLogger("devicefabric.bridge.kube")

MIN_PRODUCTIVE: Final = 1.0  # s: a watch that ends sooner with no event in it backs off


def to_resource(obj: Mapping[str, Any]) -> Resource | None:
    """The cache entry for an object; None when its metadata is unusable. A cluster-scoped
    object (no namespace) gets the namespace "" and its name as key."""
    meta = obj.get("metadata") or {}
    namespace, name, rv = meta.get("namespace", ""), meta.get("name"), meta.get("resourceVersion")
    if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(rv, str)):
        return None
    spec, status, labels = obj.get("spec"), obj.get("status"), meta.get("labels")
    notes = meta.get("annotations")
    owners = meta.get("ownerReferences")
    return Resource(
        namespace=namespace,
        name=name,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        resource_version=rv,
        spec=spec if isinstance(spec, dict) else {},
        status=status if isinstance(status, dict) else {},
        creation_timestamp=str(meta.get("creationTimestamp", "")),
        labels=labels if isinstance(labels, dict) else {},
        annotations=notes if isinstance(notes, dict) else {},
        owners=tuple(
            OwnerRef(str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")))
            for ref in (owners if isinstance(owners, list) else ())
            if isinstance(ref, dict)
        ),
    )


class Informer:
    """List and watch one collection; see the module doc."""

    def __init__(
        self, client: KubeClient, settings: KubeSettings, collection: str, what: str = "resources"
    ) -> None:
        self._client = client
        self.settings = settings
        self.collection = collection
        self.what = what
        self.cache: dict[str, Resource] = {}
        self.rv: str | None = None  # the position: last list, event or bookmark applied
        self.synced = asyncio.Event()
        self.on_change: Callable[[str], None] | None = None
        self.relists = 0  # how often it listed (1 + one per 410 or failed list)
        self.watches = 0  # how many watch streams it opened

    async def run(self, on_change: Callable[[str], None]) -> None:
        self.on_change = on_change
        failures = 0
        while True:
            started = time.monotonic()
            events = 0
            retry_after: float | None = None
            try:
                if self.rv is None:
                    self.rv = await self._relist()
                    self.synced.set()
                events = await self._watch(self.rv)
            except ExpiredError as exc:
                if self.rv is not None:  # the watch's history is gone: list again at once
                    log.info("watch of %s expired (%s): listing again", self.what, exc)
                    self.rv = None
                    continue
                log.warning("informer: the list expired (%s)", exc)  # a paged list: back off
            except NotFoundError as exc:  # the collection itself: its CRD is not installed
                log.warning(
                    "%s are not served (%s): is their CRD installed? `devicefabric manifests | "
                    "kubectl apply -f -` installs every CRD; not ready until then", self.what, exc,
                )  # fmt: skip
            except ControlPlaneError as exc:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                log.warning(
                    "informer of %s: %s (resuming from resourceVersion %s)", self.what, exc, self.rv
                )
            if retry_after is None and (events or time.monotonic() - started >= MIN_PRODUCTIVE):
                failures = 0  # a stream that worked for a while: reopen it at once
                continue
            settings = self.settings
            delay = retry_delay(
                settings.backoff_initial, settings.backoff_max, failures, retry_after
            )
            failures += 1
            await asyncio.sleep(delay)

    def notify(self, key: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(key)
        except Exception:
            log.exception("on_change failed", extra={"resource": key})

    async def _relist(self) -> str:
        """List everything, replace the cache, call `on_change` for what differs; the list's RV."""
        path = self.collection
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
            if (old := self.cache.get(k)) is None or old.resource_version != r.resource_version
        ]
        vanished = [k for k in self.cache if k not in fresh]
        self.cache = fresh
        log.info(
            "listed %d %s at resourceVersion %s: %d changed, %d gone",
            len(fresh), self.what, rv, len(changed), len(vanished),
        )  # fmt: skip
        for key in (*changed, *vanished):
            self.notify(key)
        return str(rv)

    async def _watch(self, rv: str) -> int:
        """Apply one watch stream's events from `rv`, advancing `self.rv`; the event count."""
        timeout = self.settings.watch_timeout * random.uniform(1, 2)  # noqa: S311 - spread, not crypto
        query = [
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(timeout))),
        ]
        self.watches += 1
        count = 0
        stream = self._client.watch(self.collection, query, timeout)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                count += 1
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise map_status(code, f"watch: {obj.get('message', '')}", None)
                if kind in ("ADDED", "MODIFIED"):
                    self._apply(obj)
                elif kind == "DELETED":
                    self._delete(obj)
                elif kind != "BOOKMARK":
                    continue
                self.rv = (obj.get("metadata") or {}).get("resourceVersion") or self.rv
        return count

    def _apply(self, obj: Mapping[str, Any]) -> None:
        resource = to_resource(obj)
        if resource is None:
            return
        cached = self.cache.get(resource.key)
        if cached is not None and cached.resource_version == resource.resource_version:
            return  # our own write's echo, already adopted
        self.cache[resource.key] = resource
        self.notify(resource.key)

    def _delete(self, obj: Mapping[str, Any]) -> None:
        resource = to_resource(obj)
        if resource is not None and self.cache.pop(resource.key, None) is not None:
            self.notify(resource.key)

    def adopt(self, key: str, before: Resource | None, obj: Mapping[str, Any]) -> None:
        """Cache an object we read or wrote, unless a watch event replaced `before` meanwhile."""
        if before is not None and self.cache.get(key) is before:
            fresh = to_resource(obj)
            if fresh is not None:
                self.cache[key] = fresh

    def adopt_newer(self, key: str, obj: Mapping[str, Any]) -> bool:
        """Cache the answer of a write of ours unless the cache holds something newer (a watch
        event of an earlier version must not hide our write: the next reconcile would write it
        again, a no-op); True when the cache changed."""
        fresh = to_resource(obj)
        cached = self.cache.get(key)
        if fresh is None or cached == fresh:
            return False
        if cached is not None and _newer(cached.resource_version, fresh.resource_version):
            return False
        self.cache[key] = fresh
        return True

    def written(self, key: str, obj: Mapping[str, Any] | None) -> None:
        """Cache what a create, update (`obj`: the answer) or delete (None) of ours left, and
        announce it, unless the watch already brought something newer."""
        if obj is None:
            changed = self.cache.pop(key, None) is not None
        else:
            changed = self.adopt_newer(key, obj)
        if changed:
            self.notify(key)


def _newer(a: str, b: str) -> bool:
    """True when resourceVersion `a` is known to be newer than `b` (opaque strings otherwise)."""
    return a.isdigit() and b.isdigit() and int(a) > int(b)
