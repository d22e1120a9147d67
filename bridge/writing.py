"""The write path: one key's reconcile, from the current state to at most one patch and one Event.

`StatusWriter.reconcile(key)` is what the work queue's workers run (level-based):
1. Skip while this replica may not write for the key's device (not leading, or with shards its
   shard not held: every key is reconciled again when leadership or a shard is gained).
2. Plan the patch from the resource as cached, the tracker's device and the last report
   (`statuses.plan_status`). Nothing to change -> done, no token spent.
3. Take a token of the status write budget, then plan again (the state may have moved while
   waiting), and patch `status`. The planned Event, if any, is handed to the `EventRecorder`
   (`eventing`), which records it on its own budget and retries it there: a status write never
   waits for an Event.

Own writes are overlaid on the informer's cache: after a patch against resource version V, the
status we wrote is used as "stored" for that key until the cache shows a version other than V.
A backend whose cache lags (Kubernetes: the watch echo) thus never sees the same patch planned
twice, and one that updates its cache at once (local) drops the overlay immediately.

Every control-plane call runs under `call_timeout`; its latency and outcome are metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from devicefabric.bridge.controlplane.base import ControlPlane, Resource
from devicefabric.bridge.eventing import EventRecorder
from devicefabric.bridge.metrics import BridgeMetrics
from devicefabric.bridge.mirroring import device_of
from devicefabric.bridge.queueing import Outcome
from devicefabric.bridge.statuses import (
    StatusPlan,
    plan_status,
)
from devicefabric.bridge.tracking import DeviceTracker
from devicefabric.config.mergepatch import merge_patch
from devicefabric.runtime.clock import rfc3339

SLOW_CALL_S: Final = 2.0  # a status write held longer than this means the path stalled

log = logging.getLogger("devicefabric.bridge.writes")


class StatusWriter:
    """Reconciles one key at a time; see the module doc."""

    def __init__(
        self,
        control_plane: ControlPlane,
        tracker: DeviceTracker,
        acquire: Callable[[], Awaitable[None]],
        *,
        events: EventRecorder,
        rejected: Mapping[str, str],
        metrics: BridgeMetrics,
        call_timeout: float,
    ) -> None:
        self.control_plane = control_plane
        self.tracker = tracker
        self.acquire = acquire  # one token of the status write budget
        self.events = events
        self.rejected = rejected  # key -> why mirroring refuses to send it (InvalidSpec)
        self.metrics = metrics
        self.call_timeout = call_timeout
        # Called after a write held past SLOW_CALL_S (or timed out): the path to the API server
        # stalled, so writes held meanwhile arrive together; the service forfeits the saved burst.
        self.on_slow: Callable[[], None] | None = None
        self._written: dict[str, tuple[str, dict[str, object]]] = {}  # key -> (rv, status)

    def forget(self, key: str) -> None:
        """The resource is gone."""
        self._written.pop(key, None)
        self.events.forget(key)

    def plan(self, key: str) -> tuple[Resource | None, dict[str, object], StatusPlan | None]:
        """(resource, the status taken as stored, the plan) for `key` now."""
        resource = self.control_plane.get(key)
        if resource is None:
            return None, {}, None
        stored: dict[str, object] = dict(resource.status)
        written = self._written.get(key)
        if written is not None:
            if written[0] == resource.resource_version:
                stored = written[1]
            else:
                del self._written[key]
        device_name = device_of(resource)
        device = self.tracker.get(device_name) if device_name is not None else None
        plan = plan_status(resource, device, rfc3339(), stored, self.rejected.get(key))
        return resource, stored, plan

    async def reconcile(self, key: str) -> Outcome:
        may_write = self.control_plane.may_write
        resource = self.control_plane.get(key)
        if not may_write(device_of(resource) if resource is not None else None):
            return Outcome.DONE
        resource, _, plan = self.plan(key)
        if resource is None:
            self.forget(key)
            return Outcome.DROP
        if plan is None:
            return Outcome.DONE
        await self.acquire()
        resource, stored, plan = self.plan(key)
        if resource is None or plan is None or not may_write(device_of(resource)):
            return Outcome.DONE
        started = time.monotonic()
        try:
            await self.metrics.timed_call(
                "status", self.control_plane.patch_status(key, plan.patch), self.call_timeout
            )
        finally:
            if time.monotonic() - started > SLOW_CALL_S and self.on_slow is not None:
                self.on_slow()
        self._written[key] = (resource.resource_version, merge_patch(stored, plan.patch))
        log.info(
            "status written (%s)", ", ".join(sorted(plan.patch)),
            extra={"resource": key, "device": device_of(resource), "reason": plan.reason},
        )  # fmt: skip
        if plan.event is not None:
            self.events.submit(key, plan.event)
        return Outcome.WROTE
