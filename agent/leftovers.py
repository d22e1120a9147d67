"""Children a previous agent run left behind: recorded while running, stopped on the next start.

Children lead their own process groups, so when the agent itself dies without a clean shutdown
(kill -9, the OOM killer, a crash) they keep running. A supervisor (systemd, a container runtime)
restarts the agent, which starts the persisted document again: without this module every process
would then run twice.

`ChildLedger` keeps `<state-dir>/children.json`: `{pid: start time}` of every child while it runs
(the start time, in clock ticks since boot from `/proc/<pid>/stat`, tells a child from an unrelated
process that reused its pid). It is rewritten by rename on every spawn and exit, without fsync:
the children do not survive a reboot, so only a crash of the agent process matters, and the page
cache survives that.

On start, `stop_leftovers()` signals every recorded group that still runs with the recorded start
time: SIGTERM, up to `grace` seconds, then SIGKILL. Without `/proc` (not Linux) identities cannot
be checked, so nothing is signalled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Final

from devicefabric.runtime.processes import signal_group

log = logging.getLogger("devicefabric.agent.leftovers")

CHILDREN_FILE: Final = "children.json"
LEFTOVER_GRACE_S: Final = 10.0
POLL_S: Final = 0.05
KILL_WAIT_S: Final = 2.0  # bound on waiting for SIGKILLed leftovers to be gone


def start_time(pid: int) -> int | None:
    """The start time of a live (non-zombie) `pid` in clock ticks since boot, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])  # field 22 of stat; fields[0] is field 3 (state)
    except ValueError:
        return None


class ChildLedger:
    """The record of running children; `path` None keeps it in memory only (tests, embedding)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._children: dict[int, int] = {}

    def started(self, pid: int) -> None:
        started = start_time(pid)
        if started is not None:
            self._children[pid] = started
            self._write()

    def ended(self, pid: int) -> None:
        if self._children.pop(pid, None) is not None:
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{CHILDREN_FILE}.tmp")
        try:
            tmp.write_text(json.dumps({str(k): v for k, v in self._children.items()}))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot record children in %s: %s", self.path, exc.strerror)

    def _recorded(self) -> dict[int, int]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {int(k): int(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}

    async def stop_leftovers(self, grace: float = LEFTOVER_GRACE_S) -> list[int]:
        """Stop the recorded children of a previous run that still run; their pids."""
        leftovers = [pid for pid, t in self._recorded().items() if start_time(pid) == t]
        if leftovers:
            log.warning(
                "stopping %d processes left running by a previous agent run: %s",
                len(leftovers),
                leftovers,
                extra={"reason": "leftovers"},
            )
            await _stop_groups(leftovers, grace)
        self._write()  # the ledger now describes this run (nothing yet)
        return leftovers


async def _stop_groups(pids: list[int], grace: float) -> None:
    identities = {pid: start_time(pid) for pid in pids}

    def still_running() -> list[int]:
        return [pid for pid in pids if start_time(pid) == identities[pid]]

    for pid in pids:
        signal_group(pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Not our children (init adopted them): no exit event to wait on, so poll, bounded.
    while still_running() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    # Leaders that ignored SIGTERM, and stragglers left in the groups of leaders that exited (a
    # process group id stays taken while any member lives, so it names the same group).
    for pid in pids:
        signal_group(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: wait (bounded) until they are gone, so nothing of the
    # previous run still holds a port or a file when this run starts its own children.
    deadline = loop.time() + KILL_WAIT_S
    while still_running() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
