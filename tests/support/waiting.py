"""Waiting on conditions with a deadline: the only way tests wait (never sleep-to-settle).

`wait_for`/`async_wait_for` poll a condition; `run_bounded` runs an async scenario within a
deadline; `stop_task` cancels a background task and waits for it to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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


def run_bounded(scenario: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    """`asyncio.run(scenario())`, failing (TimeoutError) when it takes longer than `timeout`."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await scenario()

    asyncio.run(bounded())


async def stop_task(task: asyncio.Task[Any], *expected: type[BaseException]) -> None:
    """Cancel `task` and wait for it; its cancellation (and any `expected` error) is swallowed."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *expected):
        await task
