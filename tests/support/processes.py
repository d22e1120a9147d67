"""The fabric's programs as subprocesses: agents and bridges started from the shipped CLI.

Both are `tests.support.proc.Proc`s (runs, logs, bounded stops, CPU time and RSS):
- `AgentProcess`: `devicefabric agent run` for one device against a `BrokerProcess`; through
  `launch.py` when its clock is skewed (`clock_offset`) or its log goes through a pipe
  (`pipe_log`, so a file-size limit on the agent cannot silence it). `close()` is the teardown:
  a clean stop (the agent stops its children), then every child the test saw (`pids`) or the
  agent's ledger still records, by process group.
- `BridgeProcess`: `devicefabric bridge run --control-plane local|kube` (through `launch.py`
  when its asyncio tasks are counted); what it serves: `/readyz`, `/devices`, `/metrics`
  (parsed into `Metrics`).

Both take `log_level` (`--log-level`, the CLI's default when None) and `launcher`: the argv
that replaces `python -m devicefabric` (an experiment on the shipped CLI, a profiler); it must end
up calling `devicefabric.cli.main` with the arguments it is given.

- `kill_groups({pid: start time})`: teardown of processes agents left (a reused pid is skipped).
- `running_pids(report)`: the pids an agent's report shows Running.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Literal

from prometheus_client.parser import text_string_to_metric_families

from devicefabric.agent.leftovers import CHILDREN_FILE, start_time
from tests.support.brokers import BrokerProcess
from tests.support.desired import DEVICE
from tests.support.ports import free_port
from tests.support.proc import STOP_BOUND, Command, Doc, Proc

__all__ = [
    "AgentProcess",
    "BridgeProcess",
    "Command",
    "Doc",
    "Metrics",
    "Plane",
    "Proc",
    "kill_groups",
    "running_pids",
]

LAUNCHER: Final = Path(__file__).with_name("launch.py")
READY_TIMEOUT: Final = 20.0
Plane = Literal["local", "kube"]


def kill_groups(seen: Mapping[int, int | None]) -> None:
    """Teardown: SIGKILL each process group (and pid) `{pid: start time}` still names.

    The start time (`leftovers.start_time`) tells a process we saw from one that reused its pid;
    None kills whatever runs under that pid (the caller checked it).
    """
    for pid, started in seen.items():
        if started is not None and start_time(pid) != started:
            continue
        for send in (os.killpg, os.kill):
            with contextlib.suppress(OSError):
                send(pid, signal.SIGKILL)


def _cli(launcher: Sequence[str], instruments: bool, log_level: str | None) -> list[str]:
    """How to run the CLI, up to the command's name: `launcher`, or `python -m devicefabric`,
    or `launch.py` (its instruments); the log options every command takes."""
    if not launcher:
        launch = [sys.executable, "-m", "devicefabric"]
        launcher = [sys.executable, str(LAUNCHER)] if instruments else launch
    level = ["--log-level", log_level] if log_level else []
    return [*launcher, "--log-format", "json", *level]


class AgentProcess(Proc):
    """`devicefabric agent run` for one device; see the module doc."""

    def __init__(
        self,
        broker: BrokerProcess,
        workdir: Path,
        *,
        device: str = DEVICE,
        heartbeat: int = 1,
        extra: Sequence[str] = (),
        password_file: Path | None = None,
        broker_urls: str | None = None,
        clock_offset: float = 0.0,
        pipe_log: bool = False,
        prefix: Iterable[str] = (),
        launcher: Sequence[str] = (),
        log_level: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """`prefix` runs the command elsewhere (`ip netns exec NS`)."""
        super().__init__(f"agent-{device}", workdir)
        self.prefix = list(prefix)
        self.launcher = list(launcher)
        self.log_level = log_level
        self.broker = broker
        self.device = device
        self.state_dir = state_dir or workdir / f"state-{device}"
        self.pipe_log = pipe_log
        self.clock_offset = clock_offset
        if clock_offset:
            self.env["FAULTS_CLOCK_OFFSET"] = str(clock_offset)
        self.options = [
            "--device",
            device,
            "--broker",
            broker.url if broker_urls is None else broker_urls,
            "--password-file",
            str(password_file or broker.password_file(device)),
            "--state-dir",
            str(self.state_dir),
            "--heartbeat",
            str(heartbeat),
            "--max-reconnect-backoff",
            "0.5",
            *extra,
        ]
        self.pids: list[int] = []  # children seen by the test, killed at teardown

    def argv(self) -> list[str]:
        cli = _cli(self.launcher, bool(self.clock_offset or self.pipe_log), self.log_level)
        return [*self.prefix, *cli, "agent", "run", *self.options]

    def terminate(self, timeout: float = STOP_BOUND) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def limit_file_size(self, limit: int) -> None:
        """RLIMIT_FSIZE of the running agent: any write past `limit` bytes of a file fails with
        EFBIG (Python ignores SIGXFSZ), as on a full disk, which needs no privilege to simulate."""
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (limit, limit))

    def signal_stop(self) -> None:
        """SIGTERM without waiting (a fabric stops all its agents at once, then waits)."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Teardown: a clean stop if possible (the agent stops its children), then SIGKILL, then
        every child pid the test saw or the agent's ledger still records."""
        self.stop()
        self.close_pipe()
        recorded: dict[int, int | None] = dict.fromkeys(self.pids)
        with contextlib.suppress(OSError, ValueError):
            ledger = json.loads((self.state_dir / CHILDREN_FILE).read_text())
            recorded.update({int(p): int(t) for p, t in ledger.items()})
        kill_groups(recorded)


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


class BridgeProcess(Proc):
    """`devicefabric bridge run` on either control plane; see the module doc.

    `options` are flags with values (`{"--write-qps": "20"}`), `extra` more argv; `prefix` runs
    the command elsewhere (`ip netns exec NS`), serving HTTP on `http_host`. Each run gets a new
    HTTP port.
    """

    def __init__(
        self,
        broker: BrokerProcess,
        workdir: Path,
        *,
        name: str = "bridge",
        plane: Plane = "local",
        state_dir: Path | None = None,
        options: Mapping[str, str] = {},
        extra: Iterable[str] = (),
        prefix: Iterable[str] = (),
        http_host: str = "127.0.0.1",
        count_tasks: bool = False,
        env: Mapping[str, str] = {},
        launcher: Sequence[str] = (),
        log_level: str | None = None,
    ) -> None:
        super().__init__(name, workdir)
        self.launcher = list(launcher)
        self.log_level = log_level
        self.broker = broker
        self.plane = plane
        self.state_dir = state_dir
        self.options = dict(options)
        self.extra = list(extra)
        self.prefix = list(prefix)
        self.http_host = http_host
        self.port = 0
        self.env = dict(env)
        self.tasks_path = workdir / f"{name}.tasks" if count_tasks else None
        if self.tasks_path is not None:
            self.env["FAULTS_TASKS_FILE"] = str(self.tasks_path)

    def argv(self) -> list[str]:
        argv = [*self.prefix, *_cli(self.launcher, self.tasks_path is not None, self.log_level)]
        argv += ["bridge", "run", "--broker", self.broker.url, "--control-plane", self.plane]
        argv += ["--password-file", str(self.broker.password_file("bridge"))]
        argv += ["--client-id", f"bridge_{self.name}", "--http", f"{self.http_host}:{self.port}"]
        if self.state_dir is not None:
            argv += ["--state-dir", str(self.state_dir)]
        return [*argv, *(item for pair in self.options.items() for item in pair), *self.extra]

    def start(self, timeout: float | None = READY_TIMEOUT) -> None:
        """Start on a new HTTP port; wait until `/readyz` says ready (unless `timeout` is None)."""
        self.port = free_port()
        super().start()
        if timeout is not None:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until `/readyz` says ready; raises at once if the bridge exited."""

        def ready() -> bool:
            self.check()
            return self.readyz().get("ready") is True

        self.wait(ready, timeout, "the bridge ready")

    # -- what it serves ----------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            url = f"http://{self.http_host}:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def readyz(self) -> Doc:
        """The `/readyz` document (whatever its status code); {} when nothing answers."""
        status, body = self.get("/readyz")
        try:
            doc: Doc = json.loads(body) if status else {}
        except ValueError:
            return {}
        return doc

    def devices(self, timeout: float = 5.0) -> dict[str, Doc]:
        """The bridge's view of every device it knows, by name (`/devices`)."""
        status, body = self.get("/devices", timeout)
        assert status == 200, f"/devices answered {status}"
        return {d["device"]: d for d in json.loads(body)}

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return Metrics(body.decode())

    def heartbeats(self) -> int:
        """Heartbeats the bridge has ingested (`devicefabric_messages_total{kind="heartbeat"}`)."""
        return int(self.metrics().value("devicefabric_messages_total", kind="heartbeat"))

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


def running_pids(report: Doc) -> dict[str, int]:
    """`{key: pid}` of the processes an agent's report shows Running."""
    return {
        key: int(proc["pid"])
        for key, proc in report["processes"].items()
        if proc.get("phase") == "Running" and "pid" in proc
    }
