"""The event log: FIFO, bounded, back-off at the head, deleted resources forgotten (sans-IO)."""

from __future__ import annotations

import pytest

from devicefabric.bridge.eventing import BASE_BACKOFF, MAX_BACKOFF, EventLog
from devicefabric.bridge.statuses import PlannedEvent

DOWN = PlannedEvent("Warning", "ConnectionLost", "agent connection lost")
UP = PlannedEvent("Normal", "Connected", "agent connected")


def drain(log: EventLog, now: float) -> list[tuple[str, str]]:
    out = []
    while (entry := log.pop(now)) is not None:
        out.append((entry.key, entry.event.reason))
    return out


def test_events_come_out_in_the_order_their_statuses_were_written() -> None:
    log = EventLog()
    log.submit("ns/a", DOWN)
    log.submit("ns/b", DOWN)
    log.submit("ns/a", UP)
    assert drain(log, 0.0) == [
        ("ns/a", "ConnectionLost"),
        ("ns/b", "ConnectionLost"),
        ("ns/a", "Connected"),
    ]


def test_past_the_capacity_the_oldest_is_dropped_and_counted() -> None:
    log = EventLog(capacity=2)
    for key in ("ns/a", "ns/b", "ns/c"):
        log.submit(key, DOWN)
    assert log.dropped == 1
    assert [k for k, _ in drain(log, 0.0)] == ["ns/b", "ns/c"]


@pytest.mark.parametrize(
    ("failures", "retry_after", "wait"),
    [
        (0, None, BASE_BACKOFF),
        (3, None, BASE_BACKOFF * 8),
        (30, None, MAX_BACKOFF),
        (0, 5.0, 5.0),  # the server's Retry-After when longer
        (3, 0.01, BASE_BACKOFF * 8),  # ...never shorter than the back-off
    ],
)
def test_a_failed_event_goes_back_to_the_head_after_its_backoff(
    failures: int, retry_after: float | None, wait: float
) -> None:
    log = EventLog()
    log.submit("ns/a", DOWN)
    log.submit("ns/b", DOWN)
    entry = log.pop(10.0)
    assert entry is not None
    entry.failures = failures
    log.fail(entry, 10.0, retry_after)
    assert log.next_due() == pytest.approx(10.0 + wait)
    assert log.pop(10.0 + wait - 0.001) is None  # the head waits; order is kept
    assert drain(log, 10.0 + wait) == [("ns/a", "ConnectionLost"), ("ns/b", "ConnectionLost")]


def test_a_deleted_resource_takes_its_pending_events_with_it() -> None:
    log = EventLog()
    log.submit("ns/a", DOWN)
    log.submit("ns/b", DOWN)
    log.submit("ns/a", UP)
    log.forget("ns/a")
    assert drain(log, 0.0) == [("ns/b", "ConnectionLost")]
    assert log.next_due() is None
