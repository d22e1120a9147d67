"""The write path: one key's reconcile, from the current state to at most one patch and one Event.

`StatusWriter.reconcile(key)` is what the work queue's workers run (level-based):
1. Skip while not leading (every key is reconciled again when leadership returns).
2. Plan the patch from the resource as cached, the tracker's device and the last report
   (`statuses.plan_status`). Nothing to change -> done, no token spent.
3. Take a token of the global write budget, then plan again (the state may have moved while
   waiting), and patch `status`. Take another token and record the planned Event, if any. An Event
   that fails transiently is kept as pending for its key and the error goes back to the queue, so
   the key is retried with back-off: the retry records the pending Event first (the status is
   already written, so the plan would not produce it again). A newer Event replaces a pending one;
   a permanent failure (a deleted resource) drops it.

Own writes are overlaid on the informer's cache: after a patch against resource version V, the
status we wrote is used as "stored" for that key until the cache shows a version other than V.
A backend whose cache lags (Kubernetes: the watch echo) thus never sees the same patch planned
twice, and one that updates its cache at once (local) drops the overlay immediately.

Every control-plane call runs under `call_timeout`; its latency and outcome are metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from devicefabric.bridge.controlplane.base import ControlPlane, Resource
from devicefabric.bridge.errors import NotFoundError
from devicefabric.bridge.metrics import BridgeMetrics
from devicefabric.bridge.mirroring import device_of
from devicefabric.bridge.queueing import Outcome
from devicefabric.bridge.statuses import (
    PlannedEvent,
    StatusPlan,
    apply_patch,
    plan_status,
    rfc3339,
)
from devicefabric.bridge.tracking import DeviceTracker
from devicefabric.config.errors import DeviceFabricError

log = logging.getLogger("devicefabric.bridge.writes")


class StatusWriter:
    """Reconciles one key at a time; see the module doc."""

    def __init__(
        self,
        control_plane: ControlPlane,
        tracker: DeviceTracker,
        acquire: Callable[[], Awaitable[None]],
        metrics: BridgeMetrics,
        call_timeout: float,
        *,
        rejection: Callable[[str | None, str], str | None] = lambda _device, _key: None,
    ) -> None:
        self.control_plane = control_plane
        self.tracker = tracker
        self.acquire = acquire  # one token of the global write budget
        self.metrics = metrics
        self.call_timeout = call_timeout
        self.rejection = rejection  # (device, key) -> why mirroring left the resource out
        self._written: dict[str, tuple[str, dict[str, object]]] = {}  # key -> (rv, status)
        self._pending_events: dict[str, PlannedEvent] = {}  # key -> Event still to record

    def forget(self, key: str) -> None:
        """The resource is gone."""
        self._written.pop(key, None)
        self._pending_events.pop(key, None)

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
        rejected = self.rejection(device_name, key)
        return resource, stored, plan_status(resource, device, rfc3339(), stored, rejected)

    async def reconcile(self, key: str) -> Outcome:
        leading = self.control_plane.leading
        if not leading.is_set():
            return Outcome.DONE
        resource, _, plan = self.plan(key)
        if resource is None:
            self.forget(key)
            return Outcome.DROP
        pending = self._pending_events.pop(key, None)
        if pending is not None:
            await self._record(key, pending)
        if plan is None:
            return Outcome.WROTE if pending is not None else Outcome.DONE
        await self.acquire()
        resource, stored, plan = self.plan(key)
        if resource is None or plan is None or not leading.is_set():
            return Outcome.DONE
        await self._call("status", self.control_plane.patch_status(key, plan.patch))
        self._written[key] = (resource.resource_version, apply_patch(stored, plan.patch))
        log.info(
            "status written (%s)", ", ".join(sorted(plan.patch)),
            extra={"resource": key, "device": device_of(resource), "reason": plan.reason},
        )  # fmt: skip
        if plan.event is not None:
            await self._record(key, plan.event)
        return Outcome.WROTE

    async def _record(self, key: str, event: PlannedEvent) -> None:
        """Record `event`; on a transient failure keep it pending and let the queue retry."""
        await self.acquire()
        try:
            await self._call(
                "event", self.control_plane.emit_event(key, event.type, event.reason, event.message)
            )
        except NotFoundError as exc:
            log.warning("event not recorded: %s", exc, extra={"resource": key})
            return
        except (DeviceFabricError, TimeoutError) as exc:
            log.warning("event not recorded yet, will retry: %s", exc, extra={"resource": key})
            self._pending_events[key] = event
            raise
        log.info("%s event recorded", event.type, extra={"resource": key, "reason": event.reason})

    async def _call(self, kind: str, call: Awaitable[None]) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.call_timeout):
                await call
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.metrics.write_errors.labels(kind, type(exc).__name__).inc()
            raise
        self.metrics.writes.labels(kind).inc()
        self.metrics.write_seconds.labels(kind).observe(time.monotonic() - started)
