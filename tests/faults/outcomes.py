"""`outcome(call, error)`: a call's value, or the expected error it raised, as a value.

Property tests check both branches of a validator: what it refuses (the error and its reason) and
what it accepts (a value that is usable). Taking the error out of its `except` block keeps those
assertions in plain sight, and any *other* exception still escapes and fails the test, which is
the invariant being fuzzed ("no exception other than the module's documented error").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")
E = TypeVar("E", bound=BaseException)


def outcome(call: Callable[[], R], error: type[E]) -> R | E:
    try:
        return call()
    except error as exc:
        return exc
