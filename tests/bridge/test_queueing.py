"""Tier 1: the keyed queue coalesces, backs off and spaces writes; the bucket bounds the rate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from devicefabric.bridge.errors import ConflictError, NotFoundError, TransientError
from devicefabric.bridge.queueing import KeyedQueue, Outcome, TokenBucket, WorkQueue


def drain(queue: KeyedQueue, now: float) -> list[str]:
    out = []
    while (key := queue.pop(now)) is not None:
        out.append(key)
    return out


def test_repeated_adds_coalesce() -> None:
    queue = KeyedQueue()
    for _ in range(5):
        queue.add("a", 0.0)
    queue.add("b", 0.0)
    assert drain(queue, 0.0) == ["a", "b"]
    assert len(queue) == 2  # both in flight


def test_adds_while_in_flight_run_once_more() -> None:
    queue = KeyedQueue(min_interval=0)
    queue.add("a", 0.0)
    assert queue.pop(0.0) == "a"
    for _ in range(10):
        queue.add("a", 0.1)
    assert queue.pop(0.1) is None  # never two workers on one key
    queue.done("a", 0.2, Outcome.DONE)
    assert drain(queue, 0.2) == ["a"]
    queue.done("a", 0.3, Outcome.DONE)
    assert drain(queue, 10.0) == []
    assert len(queue) == 0


def test_a_write_spaces_the_next_run_of_that_key_only() -> None:
    queue = KeyedQueue(min_interval=1.0, key_burst=1)
    queue.add("a", 0.0)
    queue.pop(0.0)
    queue.done("a", 0.0, Outcome.WROTE)
    queue.add("a", 0.1)
    queue.add("b", 0.1)
    assert drain(queue, 0.5) == ["b"]
    assert queue.next_due() == pytest.approx(1.0)
    assert drain(queue, 1.0) == ["a"]


def test_a_flapping_key_writes_a_burst_then_once_per_interval() -> None:
    """A device flapping every 10 ms for 10 s: 3 writes at once, then one per second."""
    queue = KeyedQueue(min_interval=1.0, key_burst=3)
    writes = []
    for tick in range(1000):
        now = tick * 0.01
        queue.add("a", now)
        if queue.pop(now) == "a":
            writes.append(round(now, 2))
            queue.done("a", now, Outcome.WROTE)
    assert writes == [0.0, 0.01, 0.02, 1.01, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def test_credits_come_back_after_a_quiet_period() -> None:
    queue = KeyedQueue(min_interval=1.0, key_burst=2)
    for t in (0.0, 0.0):
        queue.add("a", t)
        assert queue.pop(t) == "a"
        queue.done("a", t, Outcome.WROTE)
    queue.add("a", 0.1)
    assert queue.pop(0.1) is None  # out of credits until 1.0
    assert queue.pop(1.0) == "a"
    queue.done("a", 1.0, Outcome.WROTE)
    queue.add("a", 10.0)  # long quiet: a full burst again
    assert queue.pop(10.0) == "a"
    queue.done("a", 10.0, Outcome.WROTE)
    queue.add("a", 10.0)
    assert queue.pop(10.0) == "a"


def test_nothing_written_means_no_interval() -> None:
    queue = KeyedQueue(min_interval=1.0)
    queue.add("a", 0.0)
    queue.pop(0.0)
    queue.done("a", 0.0, Outcome.DONE)
    queue.add("a", 0.1)
    assert drain(queue, 0.1) == ["a"]


@pytest.mark.parametrize(
    ("failures", "expected_due"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (12, 60.0)],
)
def test_retry_backs_off_exponentially_per_key(failures: int, expected_due: float) -> None:
    queue = KeyedQueue(base_backoff=0.1, max_backoff=60.0)
    queue.add("a", 0.0)
    for _ in range(failures):
        now = queue.next_due() or 0.0
        assert queue.pop(now) == "a"
        queue.done("a", 0.0, Outcome.RETRY)  # failures all reported at t=0 for easy arithmetic
    assert queue.next_due() == pytest.approx(expected_due)


def test_retry_after_is_honoured_and_success_resets_the_back_off() -> None:
    queue = KeyedQueue(base_backoff=0.1, min_interval=0)
    queue.add("a", 0.0)
    queue.pop(0.0)
    queue.done("a", 0.0, Outcome.RETRY, retry_after=5.0)
    queue.add("a", 0.0)  # a new change does not jump the back-off
    assert queue.pop(4.9) is None
    assert queue.pop(5.0) == "a"
    queue.done("a", 5.0, Outcome.DONE)
    queue.add("a", 5.0)
    queue.pop(5.0)
    queue.done("a", 5.0, Outcome.RETRY)
    assert queue.next_due() == pytest.approx(5.1)


def test_drop_forgets_the_key() -> None:
    queue = KeyedQueue()
    queue.add("a", 0.0)
    queue.pop(0.0)
    queue.add("a", 0.0)  # dirty
    queue.done("a", 0.0, Outcome.DROP)
    assert drain(queue, 100.0) == []
    assert "a" not in queue


def test_forget_a_queued_key() -> None:
    queue = KeyedQueue()
    queue.add("a", 0.0)
    queue.forget("a")
    assert drain(queue, 1.0) == []
    assert queue.next_due() is None


def test_an_earlier_add_moves_a_delayed_key_forward() -> None:
    queue = KeyedQueue()
    queue.add("a", 0.0, delay=10.0)
    queue.add("a", 1.0)
    assert drain(queue, 1.0) == ["a"]
    assert drain(queue, 20.0) == []  # the superseded entry is skipped


@pytest.mark.parametrize(("rate", "burst", "n"), [(20, 5, 100), (100, 10, 200), (5, 1, 20)])
def test_token_bucket_spreads_at_rate_after_burst(rate: float, burst: int, n: int) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    starts = [bucket.reserve(0.0) for _ in range(n)]  # everyone asks at t=0
    assert starts[:burst] == [0.0] * burst
    assert starts[-1] == pytest.approx((n - burst) / rate)
    # in any window of 1 s at most rate (+ burst in the first) writes start
    for t in range(int(starts[-1]) + 1):
        in_window = sum(1 for s in starts if t <= s < t + 1)
        assert in_window <= rate + (burst if t == 0 else 0)


def test_token_bucket_refills_up_to_burst() -> None:
    bucket = TokenBucket(10, 3, now=0.0)
    for _ in range(3):
        assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == pytest.approx(0.1)
    assert bucket.reserve(100.0) == 0.0  # refilled (to 3, not to 1000)
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(100.0) > 0


FAILURES = {
    "gone": (NotFoundError("404"), 1),  # key: (error raised, runs before it stops failing)
    "racy": (ConflictError("409"), 2),
    "boom": (RuntimeError("bug"), 1),
    "busy": (TransientError("429", retry_after=30.0), 1),
}


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.005)


def test_worker_maps_errors_to_outcomes() -> None:
    """NotFound drops; Conflict and other errors retry; Transient waits out its retry_after."""
    clock = [0.0]
    runs: dict[str, int] = dict.fromkeys(FAILURES, 0)

    async def process(key: str) -> Outcome:
        runs[key] += 1
        error, failing_runs = FAILURES[key]
        if runs[key] <= failing_runs:
            raise error
        return Outcome.DONE

    async def story() -> None:
        queue = WorkQueue(
            KeyedQueue(base_backoff=0.0, min_interval=0),
            TokenBucket(1000, 1000, 0.0),
            clock=lambda: clock[0],
        )
        for key in FAILURES:
            queue.add(key)
        worker = asyncio.create_task(queue.serve(process), name="worker")
        try:
            await _until(lambda: runs["racy"] == 3 and runs["boom"] == 2)
            assert runs["busy"] == 1  # still waiting out retry_after
            clock[0] = 31.0
            queue.add("gone")  # any add wakes the worker; "gone" runs (and is dropped) again
            await _until(lambda: runs["busy"] == 2)
        finally:
            worker.cancel()

    asyncio.run(story())
    assert runs == {"gone": 2, "racy": 3, "boom": 2, "busy": 2}


def test_drain_forfeits_the_saved_burst_but_keeps_a_debt() -> None:
    bucket = TokenBucket(rate=2.0, burst=4, now=0.0)
    bucket.drain(10.0)  # four tokens saved up: gone
    assert bucket.reserve(10.0) == pytest.approx(0.5)  # the next one at the sustained rate
    owing = TokenBucket(rate=2.0, burst=1, now=0.0)
    owing.reserve(0.0)
    owing.reserve(0.0)  # one token in debt
    owing.drain(0.0)
    assert owing.reserve(0.0) == pytest.approx(1.0)  # the debt stays: two tokens owed now
