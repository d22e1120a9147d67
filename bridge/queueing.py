"""The keyed work queue every control-plane write goes through, and its rate limiter.

A key (`<namespace>/<name>`) names work, not a payload: the worker reads the current state when it
runs (level-based), so a key queued many times is processed once, and a delayed or coalesced key
still ends at the right value.

`KeyedQueue` is the sans-IO core (every method takes `now`):
- A key is *queued* (in the heap with a due time), *in flight* (handed to a worker), or absent.
  Adding a queued key keeps one entry (the earlier due time wins); adding an in-flight key marks
  it dirty, and `done` queues it once more. So a key is processed at most once more however often
  it is added while busy, and never by two workers at once.
- `done(key, outcome)`: `WROTE` spends one of the key's write credits: a key may write `key_burst`
  times in quick succession (a new resource goes Pending -> Running at once), then at most once
  per `min_interval` (a per-key token bucket), which bounds a flapping device to one write per
  resource per interval; a run is not started before the key has a credit. `RETRY` backs off
  exponentially per key (`runtime.backoff.retry_delay`: `base_backoff x 2^failures`, capped),
  never sooner than the `retry_after` the control plane gave; `DROP` forgets the key (it is gone).
- Stale heap entries (a key re-added earlier) are skipped lazily by comparing due times.

`TokenBucket` is the global write budget (`--write-qps`, `--write-burst`): `reserve(now)` takes a
token and returns how long to wait for it, so concurrent workers queue behind each other and the
sustained rate never exceeds `rate` after the first `burst`.

`WorkQueue` is the asyncio shell: `add`, `async get`, and `serve(process)`, the worker loop that
maps the bridge's errors onto outcomes (conflict: retry soon; transient: back off, honouring
`retry_after`; not found: drop; anything else: logged, backed off).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from devicefabric.bridge.errors import ConflictError, NotFoundError, TransientError
from devicefabric.runtime.backoff import retry_delay

log = logging.getLogger("devicefabric.bridge.queue")

Clock = Callable[[], float]
T = TypeVar("T")
DEFAULT_BASE_BACKOFF: Final = 0.1
DEFAULT_MAX_BACKOFF: Final = 60.0
DEFAULT_MIN_INTERVAL: Final = 1.0
DEFAULT_KEY_BURST: Final = 3


class Outcome(enum.Enum):
    DONE = "done"  # nothing written; no back-off, no interval
    WROTE = "wrote"  # a write happened: the per-key minimum interval starts
    RETRY = "retry"  # failed: back off and run again
    DROP = "drop"  # the key is gone: forget it


class KeyedQueue:
    """Coalescing, back-off and per-key write spacing; see the module doc. Not thread-safe."""

    def __init__(
        self,
        *,
        base_backoff: float = DEFAULT_BASE_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        key_burst: int = DEFAULT_KEY_BURST,
    ) -> None:
        if key_burst < 1:
            raise ValueError("key_burst must be >= 1")
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.min_interval = min_interval
        self.key_burst = key_burst
        self._credits: dict[str, tuple[float, float]] = {}  # key -> (credits, as of)
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}  # queued keys -> due time
        self._inflight: set[str] = set()
        self._dirty: set[str] = set()
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Depth: queued plus in-flight keys."""
        return len(self._due) + len(self._inflight)

    def __contains__(self, key: object) -> bool:
        return key in self._due or key in self._inflight

    def add(self, key: str, now: float, delay: float = 0.0) -> None:
        """Queue `key` to run at `now + delay` (not before its back-off or write interval)."""
        if key in self._inflight:
            self._dirty.add(key)
            return
        due = max(now + delay, self._not_before.get(key, 0.0))
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))

    def pop(self, now: float) -> str | None:
        """A key due by `now`, now in flight; None when nothing is due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            if self._due.get(key) != due:
                continue  # superseded by an earlier entry
            del self._due[key]
            self._inflight.add(key)
            return key
        return None

    def next_due(self) -> float | None:
        """When the earliest queued key is due (None when nothing is queued)."""
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def done(
        self, key: str, now: float, outcome: Outcome, retry_after: float | None = None
    ) -> None:
        """Finish a run of `key` (which `pop` returned)."""
        self._inflight.discard(key)
        dirty = key in self._dirty
        self._dirty.discard(key)
        if outcome is Outcome.DROP:
            self._credits.pop(key, None)
            self._not_before.pop(key, None)
            self._failures.pop(key, None)
            return
        if outcome is Outcome.RETRY:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = retry_delay(self.base_backoff, self.max_backoff, failures, retry_after)
            self._not_before[key] = now + delay
            self.add(key, now)
            return
        self._failures.pop(key, None)
        if outcome is Outcome.WROTE:
            self._spend(key, now)
        elif self._not_before.get(key, 0.0) <= now:
            self._not_before.pop(key, None)
        if dirty:
            self.add(key, now)

    def _spend(self, key: str, now: float) -> None:
        if self.min_interval <= 0:
            return
        left, since = self._credits.get(key, (float(self.key_burst), now))
        left = min(float(self.key_burst), left + (now - since) / self.min_interval) - 1.0
        self._credits[key] = (left, now)
        if left < 1.0:
            self._not_before[key] = now + (1.0 - left) * self.min_interval

    def forget(self, key: str) -> None:
        """Drop a queued key (a deleted resource); an in-flight run finishes normally."""
        self._credits.pop(key, None)
        self._due.pop(key, None)
        self._dirty.discard(key)
        self._not_before.pop(key, None)
        self._failures.pop(key, None)


class TokenBucket:
    """A token bucket of `rate` tokens/s holding at most `burst` (sans-IO)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def drain(self, now: float) -> None:
        """Forfeit the saved-up burst (a debt already owed stays): the sustained rate from now."""
        self.reserve(now)
        self._tokens = min(self._tokens + 1.0, 0.0)

    def reserve(self, now: float) -> float:
        """Take one token; return the seconds to wait before using it (0 when available now)."""
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


async def pop_when_due(
    pop: Callable[[float], T | None],
    next_due: Callable[[], float | None],
    wakeup: asyncio.Event,
    clock: Clock,
) -> T:
    """The first item `pop(now)` gives: between tries, sleep until `next_due()` (forever when
    None) or until `wakeup` is set, whichever comes first. `wakeup` is cleared before each sleep,
    so only a set after the failed `pop` wakes it."""
    while True:
        now = clock()
        item = pop(now)
        if item is not None:
            return item
        due = next_due()
        wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if due is None else max(0.0, due - now)):
                await wakeup.wait()


class WorkQueue:
    """The asyncio shell around `KeyedQueue` and `TokenBucket`."""

    def __init__(
        self,
        queue: KeyedQueue,
        bucket: TokenBucket,
        *,
        clock: Clock = time.monotonic,
        on_outcome: Callable[[str, Outcome], None] | None = None,
    ) -> None:
        self.core = queue
        self.bucket = bucket
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._on_outcome = on_outcome

    def __len__(self) -> int:
        return len(self.core)

    def add(self, key: str, delay: float = 0.0) -> None:
        self.core.add(key, self._clock(), delay)
        self._wakeup.set()

    def forget(self, key: str) -> None:
        self.core.forget(key)

    async def get(self) -> str:
        """The next due key (in flight until `done`)."""
        return await pop_when_due(self.core.pop, self.core.next_due, self._wakeup, self._clock)

    def done(self, key: str, outcome: Outcome, retry_after: float | None = None) -> None:
        self.core.done(key, self._clock(), outcome, retry_after)
        self._wakeup.set()
        if self._on_outcome is not None:
            self._on_outcome(key, outcome)

    async def acquire(self) -> None:
        """Wait for one token of the global write budget."""
        delay = self.bucket.reserve(self._clock())
        if delay > 0:
            await asyncio.sleep(delay)

    async def serve(self, process: Callable[[str], Awaitable[Outcome]]) -> None:
        """A worker: run `process(key)` for each due key until cancelled."""
        while True:
            key = await self.get()
            outcome, retry_after = Outcome.RETRY, None
            try:
                outcome = await process(key)
            except NotFoundError:
                outcome = Outcome.DROP
            except ConflictError as exc:
                log.info("write conflict, retrying: %s", exc, extra={"resource": key})
            except TransientError as exc:
                retry_after = exc.retry_after
                log.warning("write failed, backing off: %s", exc, extra={"resource": key})
            except TimeoutError:
                log.warning("control-plane call timed out, backing off", extra={"resource": key})
            except Exception:
                log.exception("unexpected error processing a key", extra={"resource": key})
            finally:
                self.done(key, outcome, retry_after)
            await asyncio.sleep(0)  # a key that needed no IO must not starve the loop
