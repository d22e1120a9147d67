"""The fabric's processes as a fault test sees them: the bridge, agents, and what the kernel knows.

- `BridgeProcess`: `devicefabric bridge run --control-plane local` (through `launch.py`) as a
  subprocess: started and waited for until `/readyz` says ready, killed with -9 or stopped with
  SIGTERM, restarted over the same state directory (a new HTTP port each run). It exposes what
  the bridge serves (`/readyz`, `/devices`, `/metrics` parsed into `Metrics`) and its asyncio
  task count (written by `launch.py` when started with `count_tasks`).
- `Agent`: `tests.agent.fabric.AgentProcess` started through `launch.py`, optionally with the
  clock skewed, or its log through a pipe so that a file-size limit (`limit_file_size`) on the
  running agent cannot silence it; `logged(agent, msg=, reason=)` reads its json log.
- `/proc` readers: RSS, threads, open descriptors, the members of a process group, and
  `kill_groups` for teardown (checking each pid's start time, so a reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from prometheus_client.parser import text_string_to_metric_families

from devicefabric.agent.leftovers import start_time
from tests.agent.fabric import AgentProcess
from tests.support.brokers import BrokerProcess
from tests.support.ports import free_port
from tests.support.waiting import ConditionTimeoutError, wait_for

LAUNCHER: Final = Path(__file__).with_name("launch.py")
STOP_BOUND: Final = 15.0
Doc = dict[str, Any]


# -- /proc ----------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads for pid {pid}")


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.add(int(entry.name))
    return members


def kill_groups(seen: dict[int, int | None]) -> None:
    """Teardown: SIGKILL each process group (and pid) `{pid: start time}` still names.

    The start time (`leftovers.start_time`) tells a process we saw from one that reused its pid.
    """
    for pid, started in seen.items():
        if started is None or start_time(pid) != started:
            continue
        for send in (os.killpg, os.kill):
            with contextlib.suppress(OSError):
                send(pid, signal.SIGKILL)


class Metrics:
    """One scrape of `/metrics`: `value(name, **labels)` sums the matching samples."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())
        )

    def by(self, name: str, label: str) -> dict[str, float]:
        return {lab[label]: v for n, lab, v in self.samples if n == name and label in lab}


class BridgeProcess:
    """`devicefabric bridge run --control-plane local` (through `launch.py`) as a subprocess."""

    def __init__(
        self,
        broker: BrokerProcess,
        workdir: Path,
        state_dir: Path,
        *,
        name: str = "bridge",
        stale_multiplier: float = 3.0,
        write_qps: float = 20.0,
        write_burst: int = 30,
        count_tasks: bool = False,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.state_dir = state_dir
        self.broker = broker
        self.options = {
            "--stale-multiplier": str(stale_multiplier),
            "--write-qps": str(write_qps),
            "--write-burst": str(write_burst),
        }
        self.tasks_path = workdir / f"{name}.tasks" if count_tasks else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0
        self.http_host = "127.0.0.1"  # where it serves HTTP (a namespace's address: `netns`)
        self.prefix: list[str] = []  # runs the command elsewhere (`ip netns exec NS`)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.runs}.log"

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until `/readyz` says ready."""
        self.runs += 1
        self.port = free_port()
        argv = [
            *self.prefix,
            sys.executable,
            str(LAUNCHER),
            "--log-format",
            "json",
            "bridge",
            "run",
            "--broker",
            self.broker.url,
            "--password-file",
            str(self.broker.password_file("bridge")),
            "--client-id",
            f"bridge_{self.name}",
            "--control-plane",
            "local",
            "--state-dir",
            str(self.state_dir),
            "--http",
            f"{self.http_host}:{self.port}",
            *(item for pair in self.options.items() for item in pair),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}
        env["PYTHONUNBUFFERED"] = "1"
        if self.tasks_path is not None:
            env["FAULTS_TASKS_FILE"] = str(self.tasks_path)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.workdir
            )
        self.wait(lambda: self.readyz().get("ready") is True, timeout, "the bridge ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no offline status, no flush; the broker fires the bridge's will."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_BOUND)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL past the bound); the exit code, None when killed."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_BOUND)
            return None

    # -- what it serves ----------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, bytes]:
        try:
            url = f"http://{self.http_host}:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def readyz(self) -> Doc:
        status, body = self.get("/readyz")
        if not status:
            return {}
        doc: Doc = json.loads(body)
        return doc

    def devices(self) -> dict[str, Doc]:
        """The bridge's view of every device it knows, by name (`/devices`)."""
        status, body = self.get("/devices")
        assert status == 200, f"/devices answered {status}"
        return {d["device"]: d for d in json.loads(body)}

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return Metrics(body.decode())

    def idle(self) -> bool:
        """Primed and nothing queued or in flight in the write queue."""
        doc = self.readyz()
        return doc.get("mqtt") == "primed" and doc.get("queueDepth") == 0

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Idle twice, a local poll interval apart (a write's echo may queue a key once more)."""
        for _ in range(2):
            self.wait(self.idle, timeout, "the bridge idle")
            time.sleep(0.15)  # longer than a journal poll of the local control plane
        self.wait(self.idle, timeout, "the bridge idle")

    def tasks(self) -> int:
        """The bridge's asyncio tasks, counted (by `launch.py`) after this call began."""
        path = self.tasks_path
        assert path is not None, "start the bridge with count_tasks=True"
        asked = time.time()
        self.wait(lambda: path.stat().st_mtime >= asked, 5, "a fresh count of tasks")
        return int(path.read_text())

    def log_lines(self) -> list[Doc]:
        return _json_lines(self.log_path)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_for(predicate, timeout, 0.02, what)
        except ConditionTimeoutError as exc:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise ConditionTimeoutError(f"{exc}\n--- {self.name} log (tail) ---\n{tail}") from None


class Agent(AgentProcess):
    """An agent started through `launch.py`: optionally a skewed clock, or its log in a pipe.

    `clock_offset` (s) sets the agent's wall clock that far off (see `launch.py`). `pipe_log`
    sends its log through a pipe to the log file the tests read, so the log survives a file-size
    limit imposed on the agent (`limit_file_size`): pipes have none.
    """

    def __init__(
        self,
        broker: BrokerProcess,
        workdir: Path,
        *,
        clock_offset: float = 0.0,
        pipe_log: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(broker, workdir, **kwargs)
        self.clock_offset = clock_offset
        self.pipe_log = pipe_log
        self._pump: threading.Thread | None = None

    def start(self) -> None:
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}
        if self.clock_offset:
            env["FAULTS_CLOCK_OFFSET"] = str(self.clock_offset)
        argv = [sys.executable, str(LAUNCHER), *self.argv[3:]]  # argv[:3]: python -m devicefabric
        if not self.pipe_log:
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd=self.workdir,
                )
            return
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        assert self.proc.stdout is not None
        self._pump = threading.Thread(
            target=_pump, args=(self.proc.stdout, self.log_path), name="agent-log", daemon=True
        )
        self._pump.start()

    def limit_file_size(self, limit: int) -> None:
        """RLIMIT_FSIZE of the running agent: any write past `limit` bytes of a file fails with
        EFBIG (Python ignores SIGXFSZ), as on a full disk, which needs no privilege to simulate."""
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (limit, limit))

    def close(self) -> None:
        super().close()
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


def _json_lines(path: Path) -> list[Doc]:
    lines: list[Doc] = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(raw)
            if isinstance(doc, dict):
                lines.append(doc)
    return lines


def running(agent: AgentProcess) -> bool:
    """The agent process runs (never exited since it was started)."""
    return agent.proc is not None and agent.proc.poll() is None


def agent_log(agent: AgentProcess, run: int | None = None) -> list[Doc]:
    """The json log lines of one run of `agent` (default: the current one)."""
    return _json_lines(agent.workdir / f"agent-{agent.device}-{run or agent.runs}.log")


def logged(agent: AgentProcess, *, msg: str = "", reason: str = "") -> list[Doc]:
    """Log lines of `agent`'s current run containing `msg` and carrying `reason`."""
    return [
        line
        for line in agent_log(agent)
        if msg in str(line.get("msg", "")) and (not reason or line.get("reason") == reason)
    ]
