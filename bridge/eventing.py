"""Events, recorded apart from status writes: their own budget, their own worker.

A status patch is the state users and controllers read; an Event is the story of how it got there.
When both took tokens from one budget, inline in the status worker, a mass transition spent two
tokens per resource and the last resource read its new status only after 2 x N / qps seconds
(5,000 devices at 20/s: 498 s). Here a status write never waits for an Event:

- `EventLog` is the sans-IO core: a FIFO of (key, Event) in the order their status changes were
  written, at most `capacity` long. Past it the oldest Event is dropped and counted: an Event is
  best effort in Kubernetes too (client-go's correlator drops and aggregates under pressure); a
  status never is. `fail(entry, now, retry_after)` puts an Event back at the head, not before its
  back-off (exponential per failure, capped, or the server's Retry-After when larger); `forget(key)`
  drops a deleted resource's pending Events.
- `EventRecorder.run()` records them one at a time, each after a token of its own bucket
  (`--event-qps`, `--event-burst`); a resource that no longer exists (404) drops its Event.

Every planned Event is still recorded exactly once unless the log overflows; order per resource is
kept (one FIFO, one worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from devicefabric.bridge.controlplane.base import ControlPlane
from devicefabric.bridge.errors import NotFoundError, TransientError
from devicefabric.bridge.metrics import BridgeMetrics
from devicefabric.bridge.queueing import TokenBucket, pop_when_due
from devicefabric.bridge.statuses import PlannedEvent
from devicefabric.config.errors import DeviceFabricError
from devicefabric.runtime.backoff import retry_delay

log = logging.getLogger("devicefabric.bridge.events")

Clock = Callable[[], float]
DEFAULT_CAPACITY: Final = 20_000  # Events waiting at most (a mass transition of 20,000 resources)
BASE_BACKOFF: Final = 0.1
MAX_BACKOFF: Final = 30.0


@dataclass(slots=True)
class PendingEvent:
    key: str
    event: PlannedEvent
    failures: int = 0
    not_before: float = 0.0


class EventLog:
    """The bounded FIFO of Events to record; see the module doc. Not thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.dropped = 0
        self._entries: deque[PendingEvent] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def submit(self, key: str, event: PlannedEvent) -> None:
        if len(self._entries) >= self.capacity:
            self._entries.popleft()
            self.dropped += 1
        self._entries.append(PendingEvent(key, event))

    def next_due(self) -> float | None:
        """When the head may be recorded (None: empty)."""
        return self._entries[0].not_before if self._entries else None

    def pop(self, now: float) -> PendingEvent | None:
        """The head, when it is due by `now`."""
        if self._entries and self._entries[0].not_before <= now:
            return self._entries.popleft()
        return None

    def fail(self, entry: PendingEvent, now: float, retry_after: float | None = None) -> None:
        """Recording `entry` failed transiently: back at the head, after its back-off."""
        delay = retry_delay(BASE_BACKOFF, MAX_BACKOFF, entry.failures, retry_after)
        entry.failures += 1
        entry.not_before = now + delay
        self._entries.appendleft(entry)

    def forget(self, key: str) -> None:
        """The resource is gone: its pending Events with it."""
        self._entries = deque(e for e in self._entries if e.key != key)


class EventRecorder:
    """The asyncio worker around `EventLog` and its own `TokenBucket`."""

    def __init__(
        self,
        control_plane: ControlPlane,
        bucket: TokenBucket,
        metrics: BridgeMetrics,
        call_timeout: float,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Clock = time.monotonic,
    ) -> None:
        self.control_plane = control_plane
        self.bucket = bucket
        self.metrics = metrics
        self.call_timeout = call_timeout
        self.log = EventLog(capacity)
        self._clock = clock
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self.log)

    def submit(self, key: str, event: PlannedEvent) -> None:
        """Queue `event` about `key` (never blocks; the oldest is dropped past the capacity)."""
        dropped = self.log.dropped
        self.log.submit(key, event)
        if self.log.dropped != dropped:
            self.metrics.events_dropped.inc()
            log.warning("event log full: oldest event dropped", extra={"resource": key})
        self._wakeup.set()

    def forget(self, key: str) -> None:
        self.log.forget(key)

    async def run(self) -> None:
        """Record Events until cancelled."""
        while True:
            entry = await self._next()
            delay = self.bucket.reserve(self._clock())
            if delay > 0:
                await asyncio.sleep(delay)
            await self._record(entry)

    async def _next(self) -> PendingEvent:
        return await pop_when_due(self.log.pop, self.log.next_due, self._wakeup, self._clock)

    async def _record(self, entry: PendingEvent) -> None:
        key, event = entry.key, entry.event
        try:
            await self.metrics.timed_call(
                "event",
                self.control_plane.emit_event(key, event.type, event.reason, event.message),
                self.call_timeout,
            )
        except NotFoundError as exc:
            log.warning("event not recorded: %s", exc, extra={"resource": key})
            return
        except (DeviceFabricError, TimeoutError) as exc:
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            log.warning("event not recorded yet, will retry: %s", exc, extra={"resource": key})
            self.log.fail(entry, self._clock(), retry_after)
            return
        except Exception:  # a bug must not stop every later Event: log it, drop this one
            log.exception("unexpected error recording an event", extra={"resource": key})
            return
        log.info("%s event recorded", event.type, extra={"resource": key, "reason": event.reason})
