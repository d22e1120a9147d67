"""`broker.throttling.RefusalLog`: which refusals are logged, with a fake clock (pure, tables)."""

from __future__ import annotations

import pytest

from devicefabric.broker.throttling import LogLine, RefusalLog

# (client, reason, now) -> lines logged, as (reason, suppressed) pairs
STEPS = [
    (("a", "publish_denied", 0.0), [("publish_denied", 0)]),
    (("a", "publish_denied", 1.0), []),
    (("a", "publish_denied", 2.0), []),
    (("b", "publish_denied", 2.0), [("publish_denied", 0)]),  # per client
    (("a", "subscribe_denied", 3.0), [("subscribe_denied", 0)]),  # per reason
    (("a", "publish_denied", 10.0), [("publish_denied", 2), ("publish_denied", 0)]),
    (("a", "publish_denied", 25.0), [("publish_denied", 0)]),  # nothing suppressed: no summary
]


def test_first_in_full_then_one_summary_per_interval() -> None:
    refusals = RefusalLog(interval=10.0)
    for (client, reason, now), expected in STEPS:
        lines = refusals.note(client, reason, f"detail {now}", now)
        assert [(line.reason, line.suppressed) for line in lines] == expected, (client, now)
    assert refusals.counts == {"publish_denied": 6, "subscribe_denied": 1}


def test_forget_summarises_what_was_suppressed() -> None:
    refusals = RefusalLog(interval=10.0)
    refusals.note("a", "publish_denied", "t1", 0.0)
    refusals.note("a", "publish_denied", "t2", 1.0)
    assert refusals.forget("a") == [LogLine("a", "publish_denied", "t2", 1)]
    assert len(refusals) == 0
    assert refusals.forget("a") == []


@pytest.mark.parametrize("flood", [10_000])
def test_a_flood_is_a_bounded_number_of_lines(flood: int) -> None:
    refusals = RefusalLog(interval=10.0)
    lines = [
        line for n in range(flood) for line in refusals.note("a", "x", "d", n * 0.001)
    ]  # 10 s of refusals at 1 kHz
    assert len(lines) <= 3
    assert refusals.counts["x"] == flood


def test_state_is_bounded_by_max_keys() -> None:
    refusals = RefusalLog(interval=10.0, max_keys=3)
    for n in range(10):
        refusals.note(f"c{n}", "x", "d", float(n) / 100)
    assert len(refusals) == 3
