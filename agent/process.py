"""One supervised process: spawn, watch, restart with back-off, stop gracefully.

A `ProcessRunner` runs one desired entry (`Want`) as an asyncio task owned by the supervisor's
TaskGroup, and keeps its observed `ProcessStatus`; every change of that state calls `on_change`
once (the agent publishes a report then). Its life:

    wait for earlier runners of the same key to finish (a restart never overlaps two copies)
    suspended            -> Stopped, done
    refused by policy    -> Failed ("refused ...": command, env or workingDir), done
    loop:
        spawn            -> Running (pid, startedAt) | Failed with the OS error, done
        exit             -> restart per restartPolicy? no: Succeeded/Failed, done
                                                       yes: CrashLoopBackOff, wait, restarts+1

Invariants:

- Each child leads its own session and process group (`start_new_session`), so a stop reaches
  every process it forked: SIGTERM to the group, up to `terminationGracePeriodSeconds`, then
  SIGKILL to the group. After the leader exits, stragglers in its group are killed too.
- Stopping is cancellation. Whatever the runner is doing, `task.cancel()` ends it; if a child
  runs, the graceful stop above happens first. A second cancellation while stopping does not
  abandon the child: the stop keeps its bound (grace, then SIGKILL), and no longer.
- `message` holds at most `MAX_MESSAGE` characters: the exit description and the tail of stderr
  (the last 1 KiB). stderr is captured for that tail (and logged at DEBUG). With a `LogBuffer`,
  stdout is captured too (and logged at DEBUG) and both streams feed it line by line; without
  one, stdout is inherited. A pipe is read in chunks of at most `READ_CHUNK` bytes, each handed
  on before the next read, so a fast writer costs the agent bounded memory (the pipe's and the
  stream reader's buffers, then the buffer's budget) and blocks on its own full pipe rather than
  the agent's loop.
- Every running child is in the `ChildLedger`, so a successor of a crashed agent stops it. The
  ledger's file writes stay off the change -> report path: a start is recorded one loop turn
  after its report is queued, an exit `LEDGER_LAG_S` later (an entry of a pid that is gone does
  no harm: `leftovers` checks each pid's start time).
- Crash restarts use equal-jitter back-off capped at `RestartTiming.cap` (floor: half the
  ceiling), so a crash loop produces at most two state changes per back-off period. A run that
  lasted `max(10 s, 2 x cap)` resets the back-off; `restarts` only grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.agent.leftovers import ChildLedger
from devicefabric.agent.logbuffer import LogBuffer, StreamName
from devicefabric.agent.reconciling import Want
from devicefabric.config.lean import MAX_MESSAGE, PhaseName, ProcessStatus, RestartPolicyName
from devicefabric.runtime.backoff import Backoff
from devicefabric.runtime.clock import rfc3339
from devicefabric.runtime.processes import signal_group

log = logging.getLogger("devicefabric.agent.process")

STDERR_TAIL_BYTES: Final = 1024
READ_CHUNK: Final = 64 * 1024  # one read of a child's pipe (also the stream reader's limit)
EOF_GRACE_S: Final = 0.5  # after the leader exits, how long stderr may still drain
KILL_WAIT_S: Final = 5.0  # after SIGKILL, how long to wait for the kernel to reap
BACKOFF_BASE_S: Final = 1.0
MIN_STABLE_RUN_S: Final = 10.0
LEDGER_LAG_S: Final = 0.05  # an exit is recorded this late, off a replacement's start path


@dataclass(frozen=True, slots=True)
class RestartTiming:
    """Crash-restart back-off: the first ceiling is `base` seconds, doubling up to `cap`."""

    cap: float = 10.0
    base: float = BACKOFF_BASE_S

    def backoff(self, rand: Callable[[], float]) -> Backoff:
        return Backoff(base=min(self.base, self.cap), cap=self.cap, jitter="equal", rand=rand)

    @property
    def stable_run_s(self) -> float:
        """A run this long resets the back-off (Kubernetes uses twice its cap, too)."""
        return max(MIN_STABLE_RUN_S, 2 * self.cap)


def should_restart(policy: RestartPolicyName, returncode: int) -> bool:
    """Kubernetes semantics: Always restarts, OnFailure restarts unless exit 0, Never never."""
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return returncode != 0
    return False


def exit_code_of(returncode: int) -> int:
    """asyncio's returncode (negative for a signal) as a shell would show it (128 + signal)."""
    return returncode if returncode >= 0 else 128 - returncode


def describe_exit(returncode: int, stderr_tail: bytes) -> str:
    """`exited with code N` or `killed by signal SIGX`, plus the stderr tail, bounded."""
    if returncode >= 0:
        head = f"exited with code {returncode}"
    else:
        try:
            head = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            head = f"killed by signal {-returncode}"
    text = stderr_tail.decode("utf-8", "replace").strip()
    if not text:
        return head
    prefix = f"{head}; stderr: "
    room = MAX_MESSAGE - len(prefix)
    if len(text) > room:
        text = "..." + text[-(room - 3) :]
    return prefix + text


def start_failure(command: Sequence[str], exc: OSError) -> str:
    """The message of a command that could not start: the OS error, and what it was about."""
    what = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    return f"cannot start {shlex.join(command[:1])}: {reason}{what}"[:MAX_MESSAGE]


class ProcessRunner:
    """Runs one desired entry until cancelled; `state` is what the agent reports for it."""

    def __init__(
        self,
        want: Want,
        *,
        policy: CommandPolicy,
        restart: RestartTiming,
        on_change: Callable[[], None],
        ledger: ChildLedger,
        after: Sequence[ProcessRunner] = (),
        rand: Callable[[], float] = random.random,
        logs: LogBuffer | None = None,
    ) -> None:
        self.want = want
        self.logs = logs
        self.state = ProcessStatus(generation=want.generation, phase="Pending")
        self.finished = asyncio.Event()
        self._policy = policy
        self._backoff = restart.backoff(rand)
        self._stable_run_s = restart.stable_run_s
        self._on_change = on_change
        self._ledger = ledger
        self._after = tuple(after)
        self._log_extra: dict[str, Any] = {"resource": want.key}

    # -- the task body -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            for earlier in self._after:
                await earlier.finished.wait()
            await self._run()
        finally:
            # Even when cancelled while waiting, do not let a successor overlap an earlier copy.
            for earlier in self._after:
                if not earlier.finished.is_set():
                    with contextlib.suppress(asyncio.CancelledError):
                        await earlier.finished.wait()
            self.finished.set()

    async def _run(self) -> None:
        spec = self.want.spec
        if spec.suspend:
            self._set(phase="Stopped", message="suspended")
            return
        refusal = self._policy.refusal(
            spec.command, env=[var.name for var in spec.env], working_dir=spec.working_dir
        )
        if refusal is not None:
            log.warning("refused: %s", refusal, extra={**self._log_extra, "reason": "refused"})
            self._set(phase="Failed", message=refusal)
            return
        loop = asyncio.get_running_loop()
        while True:
            try:
                child = await self._spawn()
            except OSError as exc:
                message = start_failure(spec.command, exc)
                log.warning("%s", message, extra={**self._log_extra, "reason": "start_failed"})
                self._set(phase="Failed", pid=None, message=message)
                return
            started = loop.time()
            self._set(
                phase="Running",
                pid=child.pid,
                started_at=rfc3339(),
                exit_code=None,
                message=None,
            )
            # Recorded right after the report goes out (the reporter's wake-up is queued first):
            # the ledger's file write is off the change -> report path, and one loop turn late.
            loop.call_soon(self._ledger.started, child.pid)
            log.info("started pid %d", child.pid, extra=self._log_extra)
            returncode, tail = await self._watch(child)
            if loop.time() - started >= self._stable_run_s:
                self._backoff.reset()
            message = describe_exit(returncode, tail)
            code = exit_code_of(returncode)
            if not should_restart(spec.restart_policy, returncode):
                phase: PhaseName = "Succeeded" if returncode == 0 else "Failed"
                log.info("%s: %s", phase, message, extra=self._log_extra)
                self._set(phase=phase, pid=None, exit_code=code, message=message)
                return
            delay = self._backoff.next_delay()
            log.info(
                "%s; restarting in %.1fs",
                message.partition(";")[0],
                delay,
                extra={**self._log_extra, "reason": "crash_loop"},
            )
            self._set(phase="CrashLoopBackOff", pid=None, exit_code=code, message=message)
            await asyncio.sleep(delay)
            self.state = replace(self.state, restarts=self.state.restarts + 1)

    # -- one child -----------------------------------------------------------------------------
    async def _spawn(self) -> _Child:
        spec = self.want.spec
        env = dict(os.environ)
        env.update((var.name, var.value) for var in spec.env)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ChildProtocol(loop),
            *spec.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=None if self.logs is None else asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.working_dir,
            env=env,
            start_new_session=True,
        )
        return _Child(transport, protocol)

    async def _watch(self, child: _Child) -> tuple[int, bytes]:
        """Wait for the child to exit (or stop it when cancelled); its returncode and stderr tail."""
        tail = bytearray()
        key = self.want.key
        try:
            async with asyncio.TaskGroup() as tg:
                readers = {tg.create_task(self._drain(child, "stderr", tail), name=f"stderr {key}")}
                if child.protocol.stdout is not None:
                    drain = self._drain(child, "stdout", None)
                    readers.add(tg.create_task(drain, name=f"stdout {key}"))
                try:
                    await asyncio.wait({child.exited})
                except asyncio.CancelledError:
                    await self._terminate(child)
                    code = child.transport.get_returncode()
                    stopped = None if code is None else exit_code_of(code)
                    self._set(phase="Stopped", pid=None, exit_code=stopped)
                    raise
                signal_group(child.pid, signal.SIGKILL)  # stragglers the leader left behind
                await asyncio.wait(readers, timeout=EOF_GRACE_S)
                for reader in readers:
                    reader.cancel()
        finally:
            child.transport.close()
            if child.exited.done():  # after the successor started (a stale entry is harmless)
                asyncio.get_running_loop().call_later(LEDGER_LAG_S, self._ledger.ended, child.pid)
        returncode = child.transport.get_returncode()
        return (returncode if returncode is not None else -signal.SIGKILL), bytes(tail)

    async def _drain(self, child: _Child, name: StreamName, tail: bytearray | None) -> None:
        """Read one pipe until EOF: into `tail` (its last bytes) and the log buffer."""
        stream = child.protocol.stderr if name == "stderr" else child.protocol.stdout
        if stream is None:  # pragma: no cover - _watch drains only the pipes it has
            return
        logs = self.logs
        try:
            while True:
                try:
                    chunk = await stream.read(READ_CHUNK)
                except OSError:  # a broken pipe must not stop the process it belongs to
                    return
                if not chunk:
                    return
                if tail is not None:
                    tail += chunk
                    del tail[:-STDERR_TAIL_BYTES]
                if logs is not None:
                    logs.feed(name, chunk, time.time())
                if log.isEnabledFor(logging.DEBUG):
                    text = chunk.decode("utf-8", "replace").rstrip()
                    log.debug("%s: %s", name, text, extra=self._log_extra)
        finally:
            if logs is not None:
                logs.end(name, time.time())

    async def _terminate(self, child: _Child) -> None:
        grace = self.want.spec.termination_grace_period_seconds
        loop = asyncio.get_running_loop()
        signal_group(child.pid, signal.SIGTERM)
        if not await _wait_until(child.exited, loop.time() + grace):
            log.warning(
                "pid %d still running %ds after SIGTERM: SIGKILL",
                child.pid,
                grace,
                extra={**self._log_extra, "reason": "grace_expired"},
            )
        signal_group(child.pid, signal.SIGKILL)
        await _wait_until(child.exited, loop.time() + KILL_WAIT_S)
        log.info("stopped pid %d", child.pid, extra=self._log_extra)

    def _set(self, **changes: Any) -> None:
        new = replace(self.state, **changes)
        if new != self.state:
            self.state = new
            self._on_change()


async def _wait_until(exited: asyncio.Future[None], deadline: float) -> bool:
    """Wait for `exited` until `deadline` (loop time), even through repeated cancellation.

    True when the child exited. Swallowing a cancellation here is deliberate and bounded: it keeps
    a stop from abandoning a child that is still inside its grace period.
    """
    loop = asyncio.get_running_loop()
    while not exited.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait({exited}, timeout=remaining)
        except asyncio.CancelledError:
            continue
    return True


class _ChildProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol plus an `exited` future resolved when the child exits.

    `Process.wait()` also waits until every pipe is closed, so a grandchild holding stderr open
    would hide the leader's exit; `process_exited` does not.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=READ_CHUNK, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


@dataclass(frozen=True, slots=True)
class _Child:
    transport: asyncio.SubprocessTransport
    protocol: _ChildProtocol

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    @property
    def exited(self) -> asyncio.Future[None]:
        return self.protocol.exited
