"""Waiting on conditions with a deadline: the only way tests wait (never sleep-to-settle)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class ConditionTimeoutError(AssertionError):
    pass


def wait_for(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ConditionTimeoutError(
                f"timed out after {timeout}s waiting for {what or predicate}"
            )
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Async `wait_for`: `predicate` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise ConditionTimeoutError(
                f"timed out after {timeout}s waiting for {what or predicate}"
            )
        await asyncio.sleep(interval)
