"""Process output captured into the supervisor's log buffers, with real subprocesses.

The flood test runs a child printing 100 MB and holds the agent's side to its promise: its RSS
stays flat, its event loop keeps turning, and the newest lines are there at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.agent.logbuffer import CUT_MARKER, LogLine
from devicefabric.agent.process import RestartTiming
from devicefabric.agent.supervising import Supervisor
from tests.support.desired import want
from tests.support.procfs import rss_kib
from tests.support.resources import key
from tests.support.waiting import async_wait_for, run_bounded, stop_task

SH = "/bin/sh"
MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def supervisor(log_budget: int = 64 * 1024) -> AsyncIterator[Supervisor]:
    sup = Supervisor(
        policy=CommandPolicy.parse(()),
        restart=RestartTiming(cap=0.1),
        on_change=lambda: None,
        log_budget=log_budget,
    )
    task = asyncio.create_task(sup.run(), name="supervisor under test")
    try:
        yield sup
    finally:
        await stop_task(task)


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 30.0) -> None:
    run_bounded(scenario, timeout)


async def lines_of(
    sup: Supervisor, name: str, count: int, timeout: float = 5.0, **query: object
) -> list[LogLine]:
    """Wait until `name`'s log holds at least `count` lines (of the query); return them."""

    def enough() -> list[LogLine] | None:
        found = sup.logs(key(name), **query)  # type: ignore[arg-type]
        return found if found is not None and len(found) >= count else None

    found: list[LogLine] | None = await async_wait_for(enough, timeout=timeout, what=name)
    assert found is not None
    return found


def rss_bytes() -> int:
    return rss_kib("self") * 1024


def test_both_streams_are_captured_line_by_line_with_their_stream() -> None:
    script = "echo out1; echo err1 >&2; echo out2; printf 'no newline' >&2"

    async def story() -> None:
        async with supervisor() as sup:
            sup.apply({key("a"): want("a", [SH, "-c", script], restart_policy="Never")})
            lines = await lines_of(sup, "a", 4)
            assert sorted((line.stream, line.text) for line in lines) == [
                ("stderr", "err1"),
                ("stderr", "no newline"),  # kept when the stream ends
                ("stdout", "out1"),
                ("stdout", "out2"),
            ]
            assert [line.text for line in lines if line.stream == "stdout"] == ["out1", "out2"]
            assert [x.text for x in sup.logs(key("a"), stream="stdout") or []] == ["out1", "out2"]
            assert [x.text for x in sup.logs(key("a"), tail=1, stream="stderr") or []] == [
                "no newline"
            ]
            assert all(line.time.endswith("Z") for line in lines)
            assert sup.logs(key("a"), since_seconds=60) == lines
            assert sup.logs(key("a"), since_seconds=-60) == []

    run(story)


def test_an_unknown_or_removed_process_has_no_logs_and_an_uncaptured_one_an_empty_list() -> None:
    async def story() -> None:
        async with supervisor() as sup:
            assert sup.logs(key("nope")) is None
            sup.apply({key("a"): want("a", [SH, "-c", "echo hi; exec sleep 60"])})
            await lines_of(sup, "a", 1)
            sup.apply({})
            assert sup.logs(key("a")) is None
        async with supervisor(log_budget=0) as sup:
            sup.apply({key("a"): want("a", [SH, "-c", "echo hi; exec sleep 60"])})
            await async_wait_for(lambda: key("a") in sup.snapshot(), what="applied")
            assert sup.logs(key("a")) == []

    run(story)


def test_the_log_survives_crash_restarts_and_the_stderr_message_is_unchanged() -> None:
    script = "echo run on stdout; echo boom >&2; exit 3"

    async def story() -> None:
        async with supervisor() as sup:
            sup.apply({key("a"): want("a", [SH, "-c", script])})
            lines = await lines_of(sup, "a", 6)
            assert [line.text for line in lines[:4]] in (
                ["run on stdout", "boom"] * 2,
                ["boom", "run on stdout"] * 2,
                ["run on stdout", "boom", "boom", "run on stdout"],
                ["boom", "run on stdout", "run on stdout", "boom"],
            )
            # Each run ends with the same message; a snapshot taken while a restarted run is
            # starting may hold none yet, so wait for it (it must come, and be this one).
            await async_wait_for(
                lambda: sup.snapshot()[key("a")].message == "exited with code 3; stderr: boom",
                what="the crash message",
            )

    run(story)


# 100 MB of numbered 100-byte lines in 1 MB blocks, then "done" on stderr.
NUMBERED = (
    "import sys\n"
    "w = sys.stdout.buffer.write\n"
    "for block in range(100):\n"
    "    w(b''.join(b'%09d %s\\n' % (block * 10000 + i, b'x' * 89) for i in range(10000)))\n"
    "sys.stdout.flush()\n"
    "sys.stderr.write('done\\n')\n"
)
FLOODS = {
    "numbered lines": [sys.executable, "-c", NUMBERED],
    "50M two-byte lines": [SH, "-c", "yes | head -c 100000000; echo done >&2"],
    "one 100 MB line": [SH, "-c", "head -c 100000000 /dev/zero | tr '\\0' x; echo done >&2"],
}


@pytest.mark.parametrize("flood", FLOODS)
def test_a_process_printing_100_mb_keeps_the_agent_flat_and_its_last_lines(flood: str) -> None:
    async def story() -> None:
        loop = asyncio.get_running_loop()
        peak = base = rss_bytes()
        worst_lag = 0.0

        async def sample() -> None:
            nonlocal peak, worst_lag
            while True:
                before = loop.time()
                await asyncio.sleep(0.01)
                worst_lag = max(worst_lag, loop.time() - before - 0.01)
                peak = max(peak, rss_bytes())

        async with supervisor() as sup:
            sampler = asyncio.create_task(sample(), name="rss sampler")
            started = time.monotonic()
            sup.apply({key("a"): want("a", FLOODS[flood], restart_policy="Never")})
            done = await lines_of(sup, "a", 1, timeout=40.0, stream="stderr")
            elapsed = time.monotonic() - started
            sampler.cancel()
            assert [line.text for line in done] == ["done"]
            last = sup.logs(key("a"), tail=100, stream="stdout")
            assert last is not None
            if flood == "numbered lines":
                assert [line.text[:9] for line in last] == [
                    f"{i:09d}" for i in range(999_900, 10**6)
                ]
                assert all(len(line.text) == 99 for line in last)
                assert done[0].seq == 10**6 + 1
            elif flood == "50M two-byte lines":
                assert [line.text for line in last] == ["y"] * 100
                assert done[0].seq == 50 * 10**6 + 1
            else:
                assert [line.text for line in last] == ["x" * 4096 + CUT_MARKER.decode()]
        growth = peak - base
        print(f"{flood}: {elapsed:.1f}s, RSS growth {growth / MiB:.2f} MiB, lag {worst_lag:.3f}s")
        assert growth < 4 * MiB
        assert worst_lag < 1.0

    run(story, timeout=60.0)
