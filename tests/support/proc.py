"""One program as a subprocess, run after run: its log, environment, stops, CPU time and RSS.

- `Proc`: one program run after run (`start()` again after a stop or a kill), its output in a
  log file per run (`<name>-<run>.log`, or through a pipe into it: `pipe_log`), an environment
  without our `DEVICEFABRIC_*`, `KUBECONFIG` or `POD_*` variables (a caller passes what it means,
  `env`). `kill()` is kill -9 (no clean shutdown: the broker fires the will); `freeze()` is
  SIGSTOP (its sockets stay, nothing is sent); `stop()` thaws it, then SIGTERM with a bound, then
  SIGKILL (None). `wait(...)` is `waiting.wait_for` failing with the tail of the log; `check()`
  raises with that tail once it exited. Its CPU time and RSS (threads included, children not)
  are read from /proc. A subclass says what it runs (`argv()`).
- `Command`: a `Proc` of a fixed argv (a script, a load generator).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from tests.support import procfs
from tests.support.waiting import ConditionTimeoutError, wait_for

STOP_BOUND: Final = 15.0
Doc = dict[str, Any]


def clean_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """This process's environment without ours (`DEVICEFABRIC_*`, `KUBECONFIG`, `POD_*`)."""
    ours = ("DEVICEFABRIC_", "KUBECONFIG", "POD_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {**base, "PYTHONUNBUFFERED": "1", **extra}


def json_lines(path: Path) -> list[Doc]:
    """The JSON objects of a log file, one per line (other lines skipped)."""
    lines: list[Doc] = []
    with contextlib.suppress(FileNotFoundError):
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(raw)
                if isinstance(doc, dict):
                    lines.append(doc)
    return lines


class Proc:
    """One CLI program, started with `start()`, possibly many times; see the module doc."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.env: dict[str, str] = {}  # extra environment of every run
        self.pipe_log = False
        self._pump: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} run {self.runs}>"

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.log_of(self.runs)

    def log_of(self, run: int) -> Path:
        return self.workdir / f"{self.name}-{run}.log"

    def start(self) -> None:
        self.close_pipe()
        self.runs += 1
        argv, env = self.argv(), clean_env(self.env)
        common: dict[str, Any] = {"stdin": subprocess.DEVNULL, "env": env, "cwd": self.workdir}
        if not self.pipe_log:
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **common)
            return
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **common
        )
        assert self.proc.stdout is not None
        self._pump = threading.Thread(
            target=_pump, args=(self.proc.stdout, self.log_path), name="log-pump", daemon=True
        )
        self._pump.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """It runs (never exited since it was last started)."""
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise, with the tail of its log, if it exited."""
        if not self.alive:
            tail = "\n".join(self.log_text().splitlines()[-20:])
            raise RuntimeError(f"{self.name} exited:\n{tail}")

    def said(self, text: str) -> bool:
        """Whether the current run wrote `text` to its log (raises if it exited meanwhile)."""
        self.check()
        return text in self.log_text()

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return procfs.rss_kib(self.pid)

    def kill(self) -> None:
        """kill -9: no clean shutdown, no offline message; the broker fires the will."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_BOUND)

    def freeze(self) -> None:
        """SIGSTOP: the process and its sockets stay, nothing is sent (`stop` thaws it first)."""
        os.kill(self.pid, signal.SIGSTOP)

    def stop(self, timeout: float = STOP_BOUND) -> int | None:
        """SIGTERM and wait (SIGKILL past the bound); the exit code, None when it was killed."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_BOUND)
            return None

    def wait_exit(self, timeout: float = STOP_BOUND) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, run: int | None = None) -> list[Doc]:
        """The json log lines of one run (default: the current one)."""
        return json_lines(self.log_of(run or self.runs))

    def logged(self, msg: str = "", **fields: str) -> list[Doc]:
        """Log lines of the current run containing `msg` and carrying `fields` (`reason=...`)."""
        return [
            line
            for line in self.log_lines()
            if msg in str(line.get("msg", "")) and all(line.get(k) == v for k, v in fields.items())
        ]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """`waiting.wait_for`, failing with the tail of this program's log."""
        try:
            return wait_for(predicate, timeout, 0.02, what)
        except ConditionTimeoutError as exc:
            tail = "\n".join(self.log_text().splitlines()[-30:])
            raise ConditionTimeoutError(f"{exc}\n--- {self.name} log (tail) ---\n{tail}") from None

    def close_pipe(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def _pump(source: IO[bytes], path: Path) -> None:
    with path.open("ab") as sink:
        for line in source:
            sink.write(line)
            sink.flush()


class Command(Proc):
    """A `Proc` of a fixed `argv` (not started)."""

    def __init__(
        self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str] = {}
    ) -> None:
        super().__init__(name, workdir)
        self._argv = list(argv)
        self.env = dict(env)

    def argv(self) -> list[str]:
        return list(self._argv)
