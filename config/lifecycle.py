"""Running an asyncio program under signals: first SIGTERM/SIGINT graceful, second forceful.

`run_program(main)` runs `main()` in a fresh event loop. The first signal (SIGINT, SIGTERM, SIGHUP) cancels the main task, so
every `async with` and TaskGroup unwinds (children stopped, offline published, sockets closed);
a second signal exits at once with code 130 (SIGINT) or 143 (SIGTERM).

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
