"""What the kernel knows about a process, read from /proc: memory, CPU time, descriptors, threads.

The one reader of `/proc/<pid>/{status,stat,fd,cmdline}` for the tests and the benchmarks. Every
function takes a pid (`"self"` works where a path component is enough: `status_kib("self")`).

- `status_kib(pid)`: the memory lines of `status` in KiB (`VmRSS`, `VmHWM`, `RssAnon`,
  `RssFile`...); `rss_kib(pid)` is VmRSS. A process without them (a zombie, a kernel thread) has
  none: `rss_kib` raises `ProcfsError` rather than reading a gone process as 0 KiB.
- `cpu_split(pid)`: (utime, stime) in seconds, threads included, children not; `cpu_seconds` sums.
- `threads(pid)`, `open_fds(pid)`, `cmdline(pid)`.
- `state(pid)`: the one-letter state (None when gone); `alive(pid)`: exists and is not a zombie.
- `group_members(pgid)`: the live processes of a process group; `wait_gone(pids)`.

Every read is of one file at one moment: a pid that is gone raises `ProcfsError` (an
`AssertionError`, so a test fails with the pid named) except in `state`/`alive`/`cmdline`, whose
answer for a gone process is a value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from tests.support.waiting import wait_for

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PROC: Final = Path("/proc")
Pid = int | str  # a pid, or "self"


class ProcfsError(AssertionError):
    """The process is gone, or its /proc file lacks what was asked."""


def _read(pid: Pid, name: str) -> str:
    try:
        return (PROC / str(pid) / name).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ProcfsError(f"cannot read /proc/{pid}/{name}: {exc}") from exc


def _stat_fields(pid: Pid) -> list[str]:
    """The fields of `stat` after the command name; `[0]` is field 3 (state)."""
    return _read(pid, "stat").rpartition(")")[2].split()


def status_kib(pid: Pid) -> dict[str, int]:
    """Every `kB` line of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...), in KiB."""
    out: dict[str, int] = {}
    for line in _read(pid, "status").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0])
    return out


def _status_value(pid: Pid, key: str) -> int:
    for line in _read(pid, "status").splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise ProcfsError(f"no {key} in /proc/{pid}/status")


def rss_kib(pid: Pid) -> int:
    """Resident set size (VmRSS) in KiB."""
    return _status_value(pid, "VmRSS")


def threads(pid: Pid) -> int:
    return _status_value(pid, "Threads")


def cpu_split(pid: Pid) -> tuple[float, float]:
    """(utime, stime) in seconds: its own code, and the kernel's on its behalf."""
    fields = _stat_fields(pid)
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: Pid) -> float:
    """utime + stime of `pid` (its threads included, its children not)."""
    return sum(cpu_split(pid))


def open_fds(pid: Pid) -> int:
    try:
        return sum(1 for _ in (PROC / str(pid) / "fd").iterdir())
    except OSError as exc:
        raise ProcfsError(f"cannot list /proc/{pid}/fd: {exc}") from exc


def cmdline(pid: Pid) -> list[bytes]:
    """The argv of `pid` (empty when it is gone or a zombie)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.split(b"\0")[:-1] if raw.endswith(b"\0") else raw.split(b"\0") if raw else []


def state(pid: Pid) -> str | None:
    """The one-letter state of `pid` (R, S, D, Z, ...), None when it does not exist."""
    try:
        return _stat_fields(pid)[0]
    except (ProcfsError, IndexError):
        return None


def alive(pid: Pid) -> bool:
    """True while `pid` exists and is not a zombie (PID 1 here may be slow to reap orphans)."""
    return state(pid) not in (None, "Z", "X")


def group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members: set[int] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except ProcfsError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.add(int(entry.name))
    return members


def wait_gone(pids: Iterable[int], timeout: float = 5.0) -> None:
    """Until none of `pids` runs (exists and is not a zombie)."""
    pids = list(pids)
    wait_for(lambda: not any(alive(p) for p in pids), timeout, 0.02, f"{pids} gone")
