"""Lifecycles: a program under signals, a component as an async context manager, a task stopped.

`run_program(main)` runs `main()` in a fresh event loop. The first signal (SIGINT, SIGTERM,
SIGHUP) cancels the main task, so every `async with` and TaskGroup unwinds (children stopped,
offline published, sockets closed); a second signal exits at once with code 130 (SIGINT) or 143
(SIGTERM).

`Closing` is the exit half of a component used as `async with`: leaving the block is
`await aclose()`, whatever happened in it. `stop_task(task)` cancels a task and waits until it
has ended (its cancellation is not an error; any other error is raised).

`raise_fd_limit()` raises the soft descriptor limit (RLIMIT_NOFILE) to the hard limit; the
console script calls it first, for every program: systemd's default soft limit (1024) is far
below what a broker or a bridge with many connections needs, and the hard limit is what the
administrator granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

log = logging.getLogger("devicefabric.lifecycle")
# SIGHUP too: closing the terminal must stop children cleanly, not orphan them.
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_program(main: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    """Run `main` until it returns or a signal stops it; return the process exit code."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio.run always runs us in a task
            raise RuntimeError("run_program needs a running task")
        hits = 0

        def on_signal(signum: int) -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                log.info("signal %s: shutting down (send it again to force)", signum)
                task.cancel()
            else:
                log.warning("second signal %s: forcing exit", signum)
                os._exit(128 + signum)

        for sig in _SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            result = await main()
        except asyncio.CancelledError:
            if hits == 0:
                raise
            return 0
        finally:
            for sig in _SIGNALS:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        return 0 if result is None else result

    return asyncio.run(runner())


class Closing:
    """An async context manager whose exit is `aclose()` (see the module doc)."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (best effort); the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard in (resource.RLIM_INFINITY, soft):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard
