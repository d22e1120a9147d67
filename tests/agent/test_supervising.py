"""The supervisor with real subprocesses: start, change, suspend, stop, crash loops, failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.agent.process import RestartTiming
from devicefabric.agent.reconciling import Want
from devicefabric.agent.supervising import Supervisor
from devicefabric.config.lean import ProcessStatus
from tests.support.desired import want
from tests.support.processes import (
    kill_groups,
)
from tests.support.procfs import alive
from tests.support.resources import key
from tests.support.waiting import async_wait_for, stop_task
from tests.support.waiting import run_bounded as run

SLEEP = ["/bin/sleep", "60"]
FAST = RestartTiming(cap=0.2)
SH = "/bin/sh"
seen_pids: list[int] = []


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    seen_pids.clear()
    yield
    kill_groups(dict.fromkeys(seen_pids))


def with_grandchild(pidfile: Path, then: str) -> str:
    """A shell script that starts a `sleep 60` grandchild, writes its pid to `pidfile`, then `then`."""
    return f"sleep 60 & echo $! > {pidfile}; {then}"


def recorded_pid(pidfile: Path) -> int:
    """The pid in `pidfile`, recorded so the test's clean-up kills it if it outlives the test."""
    pid = int(pidfile.read_text())
    seen_pids.append(pid)
    return pid


class Watch:
    """A running supervisor plus what a test asks of it."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.changes = 0

    def apply(self, *wants: Want) -> None:
        self.sup.apply({w.key: w for w in wants})

    def state(self, name: str) -> ProcessStatus | None:
        return self.sup.snapshot().get(key(name))

    async def until(
        self, name: str, predicate: Callable[[ProcessStatus], bool], timeout: float = 5.0
    ) -> ProcessStatus:
        def check() -> ProcessStatus | None:
            state = self.state(name)
            if state is not None and state.pid is not None:
                seen_pids.append(state.pid)
            return state if state is not None and predicate(state) else None

        found: ProcessStatus | None = await async_wait_for(
            check, timeout=timeout, what=f"{name}: {predicate}"
        )
        assert found is not None
        return found

    async def shell(self, script: str, **fields: Any) -> int:
        """Run `script` under /bin/sh as the only process "a"; returns its pid once Running."""
        self.apply(want("a", [SH, "-c", script], **fields))
        return await self.running("a")

    async def running(self, name: str, timeout: float = 5.0) -> int:
        state = await self.until(name, lambda s: s.phase == "Running", timeout)
        assert state.pid is not None
        return state.pid


@contextlib.asynccontextmanager
async def supervisor(
    allow: tuple[str, ...] = (), restart: RestartTiming = FAST
) -> AsyncIterator[Watch]:
    watch: Watch
    sup = Supervisor(
        policy=CommandPolicy.parse(allow),
        restart=restart,
        on_change=lambda: setattr(watch, "changes", watch.changes + 1),
    )
    watch = Watch(sup)
    task = asyncio.create_task(sup.run(), name="supervisor under test")
    try:
        yield watch
    finally:
        await stop_task(task)


async def gone(pid: int, timeout: float = 5.0) -> None:
    await async_wait_for(lambda: not alive(pid), timeout=timeout, what=f"pid {pid} gone")


def test_start_runs_the_command_with_env_and_working_dir(tmp_path: Path) -> None:
    script = 'echo "$GREETING $(pwd)" > out.txt; exec sleep 60'

    async def story() -> None:
        async with supervisor() as w:
            w.apply(
                want(
                    "a",
                    [SH, "-c", script],
                    env=[{"name": "GREETING", "value": "hello"}],
                    working_dir=str(tmp_path),
                )
            )
            pid = await w.running("a")
            assert alive(pid)
            state = w.state("a")
            assert state is not None
            assert state.started_at is not None
            assert state.started_at.endswith("Z")
            out = tmp_path / "out.txt"
            await async_wait_for(lambda: out.exists() and out.read_text().strip(), what="out.txt")
            assert out.read_text().split() == ["hello", str(tmp_path)]
        await gone(pid)

    run(story)


def test_a_spec_change_restarts_only_that_process() -> None:
    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", SLEEP), want("b", SLEEP))
            a1, b1 = await w.running("a"), await w.running("b")
            w.apply(want("a", ["/bin/sleep", "61"], generation=2), want("b", SLEEP))
            a2 = await w.running("a")
            await w.until("a", lambda s: s.generation == 2 and s.phase == "Running")
            assert a2 != a1
            await gone(a1)
            assert w.state("b") is not None
            assert w.state("b").pid == b1  # type: ignore[union-attr]
            assert alive(b1)

    run(story)


def test_suspend_stops_and_resume_starts_again() -> None:
    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", SLEEP))
            pid = await w.running("a")
            w.apply(want("a", SLEEP, generation=2, suspend=True))
            state = await w.until("a", lambda s: s.phase == "Stopped")
            assert state.pid is None
            await gone(pid)
            w.apply(want("a", SLEEP, generation=3))
            again = await w.running("a")
            assert again != pid

    run(story)


def test_an_empty_list_stops_everything() -> None:
    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", SLEEP), want("b", SLEEP), want("c", SLEEP))
            pids = [await w.running(n) for n in "abc"]
            w.apply()
            assert w.sup.snapshot() == {}
            for pid in pids:
                await gone(pid)
            await async_wait_for(lambda: w.sup.draining == 0, what="nothing draining")

    run(story)


@pytest.mark.parametrize(
    ("policy", "code", "phase"),
    [
        ("Never", 0, "Succeeded"),
        ("Never", 3, "Failed"),
        ("OnFailure", 0, "Succeeded"),
        ("OnFailure", 3, "CrashLoopBackOff"),
        ("Always", 0, "CrashLoopBackOff"),
        ("Always", 3, "CrashLoopBackOff"),
    ],
)
def test_restart_policy(policy: str, code: int, phase: str) -> None:
    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", [SH, "-c", f"exit {code}"], restart_policy=policy))
            state = await w.until("a", lambda s: s.phase == phase)
            assert state.exit_code == code
            assert state.pid is None
            if phase == "CrashLoopBackOff":
                await w.until("a", lambda s: s.restarts >= 2)
            else:  # terminal: stays, never restarted
                assert state.restarts == 0
                assert state.message == f"exited with code {code}"

    run(story)


def test_crash_loop_reports_stderr_tail_bounded_and_restarts_grow() -> None:
    noisy = "head -c 5000 /dev/zero | tr '\\0' x >&2; echo THE-END >&2; exit 7"

    async def story() -> None:
        async with supervisor(restart=RestartTiming(cap=0.1)) as w:
            w.apply(want("a", [SH, "-c", noisy]))
            state = await w.until("a", lambda s: s.phase == "CrashLoopBackOff")
            assert state.exit_code == 7
            assert state.message is not None
            assert state.message.startswith("exited with code 7; stderr: ...")
            assert state.message.endswith("THE-END")
            assert len(state.message) <= 1024
            later = await w.until("a", lambda s: s.restarts >= 3)
            assert later.restarts >= 3

    run(story)


def test_killed_by_a_signal_is_reported_as_such() -> None:
    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", [SH, "-c", "kill -9 $$"], restart_policy="Never"))
            state = await w.until("a", lambda s: s.phase == "Failed")
            assert state.exit_code == 137
            assert state.message == "killed by signal SIGKILL"

    run(story)


@pytest.mark.parametrize(
    ("command", "fields", "expected"),
    [
        (["/nonexistent/binary"], {}, "No such file or directory"),
        (["{tmp}/not-executable"], {}, "Permission denied"),
        (["/bin/true"], {"working_dir": "/nonexistent/dir"}, "/nonexistent/dir"),
    ],
    ids=["missing-binary", "not-executable", "bad-working-dir"],
)
def test_a_command_that_cannot_start_fails_and_the_rest_keeps_running(
    command: list[str], fields: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    command = [part.format(tmp=tmp_path) for part in command]

    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("bad", command, **fields), want("good", SLEEP))
            state = await w.until("bad", lambda s: s.phase == "Failed")
            assert state.message is not None
            assert state.message.startswith("cannot start")
            assert expected in state.message
            pid = await w.running("good")
            assert alive(pid)

    run(story)


def test_allow_command_refuses_others_with_a_clear_message() -> None:
    async def story() -> None:
        async with supervisor(allow=("/bin/sleep",)) as w:
            w.apply(want("ok", SLEEP), want("no", [SH, "-c", "sleep 60"]))
            state = await w.until("no", lambda s: s.phase == "Failed")
            assert state.message is not None
            assert "refused" in state.message
            assert "--allow-command" in state.message
            assert state.pid is None
            await w.running("ok")

    run(story)


def test_stop_is_graceful_first(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    script = f"trap 'echo bye > {marker}; exit 0' TERM; while :; do sleep 0.05; done"

    async def story() -> None:
        async with supervisor() as w:
            pid = await w.shell(script)
            w.apply()
            await gone(pid)
            assert marker.read_text().strip() == "bye"

    run(story)


def test_a_child_ignoring_sigterm_is_killed_after_its_grace_period() -> None:
    script = "trap '' TERM; while :; do sleep 0.05; done"

    async def story() -> None:
        async with supervisor() as w:
            pid = await w.shell(script, termination_grace_period_seconds=1)
            start = time.monotonic()
            w.apply()
            await gone(pid)
            took = time.monotonic() - start
            assert 0.9 <= took < 4.0

    run(story)


def test_stop_reaches_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"

    async def story() -> None:
        async with supervisor() as w:
            pid = await w.shell(with_grandchild(pidfile, then="wait"))
            await async_wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
            grandchild = recorded_pid(pidfile)
            assert alive(grandchild)
            w.apply()
            await gone(pid)
            await gone(grandchild)

    run(story)


def test_stragglers_die_with_their_leader(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    script = with_grandchild(pidfile, then="exit 0")

    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", [SH, "-c", script], restart_policy="Never"))
            await w.until("a", lambda s: s.phase == "Succeeded")
            await gone(recorded_pid(pidfile))

    run(story)


def test_a_replacement_never_overlaps_the_old_copy(tmp_path: Path) -> None:
    lock, result = tmp_path / "lock", tmp_path / "result"
    old = f"touch {lock}; trap 'sleep 0.3; rm {lock}; exit 0' TERM; while :; do sleep 0.05; done"
    new = f"if [ -e {lock} ]; then echo overlap > {result}; else echo ok > {result}; fi; sleep 60"

    async def story() -> None:
        async with supervisor() as w:
            w.apply(want("a", [SH, "-c", old]))
            await w.running("a")
            await async_wait_for(lock.exists, what="old copy holds the lock")
            w.apply(want("a", [SH, "-c", new], generation=2))
            await w.until("a", lambda s: s.phase == "Running" and s.generation == 2)
            await async_wait_for(lambda: result.exists() and result.read_text().strip())
            assert result.read_text().strip() == "ok"

    run(story)


def test_shutdown_stops_every_child_within_the_grace_bound() -> None:
    ignoring = "trap '' TERM; while :; do sleep 0.05; done"

    async def story() -> None:
        watch: Watch
        async with supervisor() as watch:
            watch.apply(
                want("a", SLEEP),
                want("b", [SH, "-c", ignoring], termination_grace_period_seconds=1),
            )
            pids = [await watch.running("a"), await watch.running("b")]
            start = time.monotonic()
        took = time.monotonic() - start
        assert not any(alive(p) for p in pids)
        assert took < 4.0  # both stopped in parallel, bounded by the longest grace (1 s)

    run(story)


def test_a_crash_back_off_wait_never_delays_a_stop() -> None:
    async def story() -> None:
        watch: Watch
        async with supervisor(restart=RestartTiming(cap=30, base=30)) as watch:
            watch.apply(want("crash", [SH, "-c", "exit 1"]), want("a", SLEEP))
            await watch.until("crash", lambda s: s.phase == "CrashLoopBackOff")
            pid = await watch.running("a")
            start = time.monotonic()  # the crash loop now waits 15-30 s before its restart
        assert time.monotonic() - start < 2.0
        assert not alive(pid)

    run(story)
