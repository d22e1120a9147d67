"""Back-off: exponential ceilings, capped; full jitter spans [0, ceiling], equal jitter [c/2, c]."""

from __future__ import annotations

import pytest

from devicefabric.runtime.backoff import Backoff, ceiling, retry_delay


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


@pytest.mark.parametrize(
    ("base", "cap", "jitter", "rand", "expected"),
    [
        # the ceiling doubles from base up to the cap; rand=1 shows the ceiling itself
        (1.0, 10.0, "full", 1.0, [1, 2, 4, 8, 10, 10]),
        (0.5, 30.0, "full", 1.0, [0.5, 1, 2, 4, 8, 16, 30, 30]),
        # full jitter may reach zero: spreading a fleet's reconnects
        (1.0, 10.0, "full", 0.0, [0, 0, 0, 0]),
        (1.0, 10.0, "full", 0.5, [0.5, 1, 2, 4, 5]),
        # equal jitter keeps half the ceiling as a floor: a hard bound on crash-restart rate
        (1.0, 10.0, "equal", 0.0, [0.5, 1, 2, 4, 5, 5]),
        (1.0, 10.0, "equal", 1.0, [1, 2, 4, 8, 10]),
        # base == cap: a constant ceiling (what tests use with a tiny --max-backoff)
        (0.2, 0.2, "equal", 0.0, [0.1, 0.1, 0.1]),
    ],
)
def test_delays(base: float, cap: float, jitter: str, rand: float, expected: list[float]) -> None:
    backoff = Backoff(base=base, cap=cap, jitter=jitter, rand=lambda: rand)  # type: ignore[arg-type]
    assert delays(backoff, len(expected)) == pytest.approx(expected)


def test_reset_starts_over() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rand=lambda: 1.0)
    assert delays(backoff, 4) == [1, 2, 4, 8]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_every_delay_is_within_zero_and_cap_for_any_random_source() -> None:
    values = iter([0.3, -5.0, 7.0, 0.99, 1.0, 0.0] * 20)
    backoff = Backoff(base=0.1, cap=3.0, rand=lambda: next(values))
    for delay in delays(backoff, 100):
        assert 0.0 <= delay <= 3.0


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(base=1.0, cap=10.0, attempt=10_000, rand=lambda: 1.0)
    assert backoff.next_delay() == 10.0


@pytest.mark.parametrize(("base", "cap", "factor"), [(0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (1, 2, 0.5)])
def test_invalid_parameters_are_refused(base: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(base=base, cap=cap, factor=factor)


@pytest.mark.parametrize(
    ("floor", "cap", "rand", "expected"),
    [
        (1.2, 30.0, 0.0, [1.2, 1.2, 1.2]),  # the floor holds with no jitter at all
        (1.2, 30.0, 1.0, [1.7, 2.2, 3.2]),  # shifted: the jitter's spread is kept above it
        (1.2, 1.5, 1.0, [1.5, 1.5, 1.5]),  # never above the cap
        (0.5, 0.5, 0.3, [0.5, 0.5, 0.5]),  # a cap below the floor: the cap
    ],
)
def test_a_floor_shifts_every_delay(
    floor: float, cap: float, rand: float, expected: list[float]
) -> None:
    backoff = Backoff(base=min(0.5, cap), cap=cap, floor=floor, rand=lambda: rand)
    assert [round(backoff.next_delay(), 6) for _ in expected] == expected


def test_a_negative_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        Backoff(base=1.0, cap=2.0, floor=-1.0)


@pytest.mark.parametrize(
    ("failures", "retry_after", "expected"),
    [
        (0, None, 0.1),
        (3, None, 0.8),
        (20, None, 60.0),  # capped
        (10_000, None, 60.0),  # no overflow however long it failed
        (0, 5.0, 5.0),  # the server's Retry-After wins when it asks for longer...
        (20, 90.0, 90.0),  # ...even past the cap
        (3, 0.2, 0.8),  # ...and never shortens the back-off
    ],
)
def test_retry_delay_doubles_to_the_cap_and_honours_retry_after(
    failures: int, retry_after: float | None, expected: float
) -> None:
    assert retry_delay(0.1, 60.0, failures, retry_after) == pytest.approx(expected)
    assert ceiling(0.1, 60.0, failures) <= 60.0
