"""The supervisor: one `ProcessRunner` task per desired entry, applied from reconcile plans.

`Supervisor.run()` blocks until cancelled and owns a TaskGroup holding every runner task.
`apply(wants)` reconciles the desired entries against what runs and acts on the plan at once,
without awaiting: a stop or a restart only cancels the old runner (which stops its child
gracefully in its own task), and a new runner for the same key waits until every earlier runner of
that key has finished, so two copies of one entry never overlap and a slow stop of one entry never
delays another.

Invariants:

- `snapshot()` holds exactly the applied entries; a removed entry disappears at once (its child
  may still be inside its grace period, tracked as "draining" until it has exited).
- Cancelling `run()` (agent shutdown) cancels every runner: all children get SIGTERM together and
  the TaskGroup waits until each has exited or was killed after its own grace period.
- `apply` before `run()` has started keeps the entries and applies them when it starts; after
  shutdown began it is ignored (nothing new may start while stopping).
- Each applied key has one `LogBuffer` (unless `log_budget` is 0) shared by its runners: it keeps
  the output of earlier runs across crash restarts and spec changes, and goes with the key when
  the key is removed. `logs(key, ...)` reads it; None for a key that is not applied.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.agent.leftovers import ChildLedger
from devicefabric.agent.logbuffer import (
    DEFAULT_BUDGET,
    LogBuffer,
    LogLine,
    StreamChoice,
    StreamName,
)
from devicefabric.agent.logfiles import RotatingFile, file_name
from devicefabric.agent.process import ProcessRunner, RestartTiming
from devicefabric.agent.reconciling import ActionKind, Plan, Want, reconcile
from devicefabric.config.lean import ProcessStatus

STREAMS: Final[tuple[StreamName, ...]] = ("stdout", "stderr")
log = logging.getLogger("devicefabric.agent.supervising")


class Supervisor:
    """Runs the applied entries; see the module docstring for the invariants."""

    def __init__(
        self,
        *,
        policy: CommandPolicy,
        restart: RestartTiming,
        on_change: Callable[[], None],
        ledger: ChildLedger | None = None,
        rand: Callable[[], float] = random.random,
        log_budget: int = DEFAULT_BUDGET,
        log_dir: Path | None = None,
        log_file_bytes: int = 0,
    ) -> None:
        self._ledger = ledger if ledger is not None else ChildLedger(None)
        self._policy = policy
        self._restart = restart
        self._on_change = on_change
        self._rand = rand
        self._log_budget = log_budget  # bytes per key; 0: no capture (stdout inherited)
        self._log_dir = log_dir  # with `log_file_bytes`: a rotating copy of each key's output
        self._log_file_bytes = log_file_bytes
        self._logs: dict[str, LogBuffer] = {}
        self._runners: dict[str, ProcessRunner] = {}
        self._tasks: dict[ProcessRunner, asyncio.Task[None]] = {}
        self._draining: dict[str, list[ProcessRunner]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._pending: Mapping[str, Want] | None = None
        self._closing = False

    async def run(self) -> None:
        """Supervise until cancelled; on cancellation every child is stopped before returning."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    self.apply(pending)
                await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self._closing = True
            self._tg = None

    # -- applying ------------------------------------------------------------------------------
    def apply(self, wants: Mapping[str, Want]) -> Plan:
        """Make the running set equal `wants`; returns the plan acted on."""
        plan = reconcile(wants, self.running())
        if self._closing:
            log.warning("shutting down: desired state not applied")
            return plan
        if self._tg is None:
            self._pending = dict(wants)
            return plan
        for action in plan.actions:
            if action.kind is ActionKind.STOP or action.kind is ActionKind.RESTART:
                self._stop(action.key)
            if action.kind is ActionKind.STOP:
                gone = self._logs.pop(action.key, None)
                for mirror in gone.mirrors.values() if gone is not None else ():
                    mirror.close()
            if action.want is not None:
                self._start(action.want)
        if not plan.empty:
            log.info(
                "applied: start %s, restart %s, stop %s, unchanged %d",
                plan.keys(ActionKind.START) or "-",
                plan.keys(ActionKind.RESTART) or "-",
                plan.keys(ActionKind.STOP) or "-",
                len(plan.unchanged),
            )
            self._on_change()
        return plan

    def _start(self, want: Want) -> None:
        if self._tg is None:  # pragma: no cover - apply() checked it
            raise RuntimeError("supervisor is not running")
        earlier = [r for r in self._draining.get(want.key, []) if not r.finished.is_set()]
        logs = self._logs.get(want.key)
        if logs is None and self._log_budget:
            logs = self._logs[want.key] = LogBuffer(self._log_budget)
            if self._log_dir is not None and self._log_file_bytes:
                for stream in STREAMS:
                    path = self._log_dir / file_name(want.key, stream)
                    logs.mirrors[stream] = RotatingFile(path, self._log_file_bytes)
        runner = ProcessRunner(
            want,
            policy=self._policy,
            restart=self._restart,
            on_change=self._on_change,
            ledger=self._ledger,
            after=earlier,
            rand=self._rand,
            logs=logs,
        )
        self._runners[want.key] = runner
        task = self._tg.create_task(runner.run(), name=f"process {want.key}")
        self._tasks[runner] = task
        task.add_done_callback(functools.partial(self._forget, runner))

    def _stop(self, key: str) -> None:
        runner = self._runners.pop(key)
        task = self._tasks.get(runner)
        if task is not None and not task.done():
            self._draining.setdefault(key, []).append(runner)
            task.cancel()

    def _forget(self, runner: ProcessRunner, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(runner, None)
        key = runner.want.key
        draining = self._draining.get(key)
        if draining is not None and runner in draining:
            draining.remove(runner)
            if not draining:
                del self._draining[key]

    # -- observing -----------------------------------------------------------------------------
    def running(self) -> dict[str, Want]:
        """What is applied now, by key (including entries that finished or failed)."""
        return {key: runner.want for key, runner in self._runners.items()}

    def snapshot(self) -> dict[str, ProcessStatus]:
        """The observed state of every applied entry, by key."""
        return {key: runner.state for key, runner in self._runners.items()}

    def logs(
        self,
        key: str,
        tail: int | None = None,
        since_seconds: float | None = None,
        stream: StreamChoice = "both",
    ) -> list[LogLine] | None:
        """The newest `tail` lines (all when None) `key`'s process printed, oldest first.

        Only lines of the last `since_seconds` and of `stream` count. None when `key` is not
        applied; empty when it is but output is not captured (`log_budget` 0).
        """
        if key not in self._runners:
            return None
        buffer = self._logs.get(key)
        if buffer is None:
            return []
        since = None if since_seconds is None else time.time() - since_seconds
        return buffer.tail(tail, since, stream)

    @property
    def draining(self) -> int:
        """How many removed or replaced runners are still stopping their child."""
        return sum(len(v) for v in self._draining.values())
