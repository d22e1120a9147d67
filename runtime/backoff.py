"""Exponential back-off with jitter, capped: a pure calculator with an injectable random source.

The ceiling of attempt n is `min(cap, base * factor**n)`. Two jitter modes:

- `full` (reconnects): the delay is uniform in `[0, ceiling]`, so a fleet that lost its broker at
  the same instant spreads its reconnects instead of stampeding (the AWS "full jitter" result).
- `equal` (crash restarts): the delay is uniform in `[ceiling/2, ceiling]`, so there is a hard
  floor: a crash-looping process restarts, and is reported, at most once per `base/2` seconds.

With a `floor`, every delay is shifted up by it (`floor + jitter`, still at most `cap`), which
keeps the spread of the jitter: a broker that jails a client id reconnecting too soon (NATS holds
one back for about a second) is never hit, and a fleet does not bunch up at the floor.

Invariants: every delay is in `[min(floor, cap), cap]`; the ceiling never decreases until
`reset()`; no clock and no sleeping here (callers wait, cancellably).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "equal"]


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
        # Past ~64 doublings the product overflows nothing but is pointless; stop growing early.
        exponent = min(self.attempt, 64)
        return min(self.cap, self.base * self.factor**exponent)

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
