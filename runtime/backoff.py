"""Exponential back-off with jitter, capped: a pure calculator with an injectable random source.

The ceiling of attempt n is `min(cap, base * factor**n)`. Two jitter modes:

- `full` (reconnects): the delay is uniform in `[0, ceiling]`, so a fleet that lost its broker at
  the same instant spreads its reconnects instead of stampeding (the AWS "full jitter" result).
- `equal` (crash restarts): the delay is uniform in `[ceiling/2, ceiling]`, so there is a hard
  floor: a crash-looping process restarts, and is reported, at most once per `base/2` seconds.

With a `floor`, every delay is shifted up by it (`floor + jitter`, still at most `cap`), which
keeps the spread of the jitter: a broker that jails a client id reconnecting too soon (NATS holds
one back for about a second) is never hit, and a fleet does not bunch up at the floor.

Without jitter (a work queue's per-key retries, an informer's reopened watch): `ceiling(base,
cap, failures)` is the same capped doubling as a pure function, and `retry_delay` adds the one
rule a server's answer brings: never sooner than its `Retry-After`.

Invariants: every delay is in `[min(floor, cap), cap]`; the ceiling never decreases until
`reset()`; no clock and no sleeping here (callers wait, cancellably).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "equal"]


def ceiling(base: float, cap: float, attempt: int, factor: float = 2.0) -> float:
    """`min(cap, base * factor**attempt)`: the delay before retry `attempt` (0 for the first)."""
    # Past ~64 doublings the product is pointless (and may overflow): stop growing early.
    return min(cap, base * factor ** min(attempt, 64))


def retry_delay(base: float, cap: float, failures: int, retry_after: float | None = None) -> float:
    """The un-jittered delay after `failures` failures in a row (0 for the first), never less
    than the server's `retry_after` (which may exceed `cap`: the server knows best)."""
    delay = ceiling(base, cap, failures)
    return delay if retry_after is None else max(delay, retry_after)


@dataclass(slots=True)
class Backoff:
    """Successive delays for retrying; `next_delay()` advances, `reset()` starts over."""

    base: float
    cap: float
    factor: float = 2.0
    jitter: Jitter = "full"
    rand: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"back-off needs 0 < base <= cap, got base={self.base} cap={self.cap}")
        if self.factor < 1:
            raise ValueError(f"back-off factor must be >= 1, got {self.factor}")
        if self.floor < 0:
            raise ValueError(f"back-off floor must be >= 0, got {self.floor}")

    def ceiling(self) -> float:
        """The largest delay the next attempt may get."""
        return ceiling(self.base, self.cap, self.attempt, self.factor)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        top = self.ceiling()
        self.attempt += 1
        r = min(max(self.rand(), 0.0), 1.0)
        delay = top / 2 + r * top / 2 if self.jitter == "equal" else r * top
        return min(self.floor + delay, self.cap)

    def reset(self) -> None:
        """Start over from `base` (after a success: a connection held, a process ran stably)."""
        self.attempt = 0
