"""The whole fabric as separate processes, for the fault scenarios of issue 7.

`LocalFabric(workdir, secret, devices)` owns what an operator runs on one machine: a real
mosquitto generated from our broker config for `devices`, `devicefabric bridge run
--control-plane local` as a subprocess (`BridgeProcess`, killable with -9 and restartable over
the same state directory), and `devicefabric agent run` per device (`tests.agent.fabric`'s
`AgentProcess`, or `Agent` here when a test needs the clock skewed, a file-size limit or its log
through a pipe). Resources are applied through `LocalStore`, the code `devicefabric apply` runs.

Counting writes: the local control plane appends one `<revision> <namespace>/<name>` line to its
journal (`changes.log`) for every status patch (and every apply), and one line to `events.jsonl`
per Event. `Ledger.mark()` remembers where both files end; `writes(mark)`/`events(mark)` return
what was added since, so a test takes the mark after arranging its resources and counts exactly
what the bridge wrote. A journal rotation inside a window fails the count loudly.

Waiting: every wait is on a condition with a deadline (`tests.support.waiting`). `BridgeProcess`
exposes what the bridge serves: `/readyz` (queue depth, MQTT state), `/devices` (the bridge's
view, `lastSeen` by its own clock), `/metrics` (parsed), and what the kernel knows about it (RSS,
open descriptors, threads; asyncio tasks through `launch.py`).

Teardown stops everything it started, by pid: agents first (all signalled at once, each then
waited for, then the children their ledger or a test recorded), the bridges, the broker.
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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Self

import yaml
from prometheus_client.parser import text_string_to_metric_families

from devicefabric.agent.leftovers import start_time
from devicefabric.bridge.controlplane.localstore import LocalStore
from devicefabric.bridge.controlplane.manifests import Manifest, parse_manifests
from devicefabric.config.resource import API_VERSION, KIND
from tests.agent.fabric import AgentProcess
from tests.support.brokers import BrokerProcess, prepare_mosquitto
from tests.support.mqtt import Client, connect
from tests.support.ports import free_port
from tests.support.waiting import ConditionTimeoutError, wait_for

LAUNCHER: Final = Path(__file__).with_name("launch.py")
NAMESPACE: Final = "default"
STOP_BOUND: Final = 15.0
Doc = dict[str, Any]


# -- resources ------------------------------------------------------------------------------------
def manifest(name: str, device: str, command: list[str], **spec: object) -> Manifest:
    """A DeviceProcess as `devicefabric apply -f` would read it (defaults filled in)."""
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"deviceName": device, "command": command, **spec},
    }
    (parsed,) = parse_manifests(yaml.safe_dump(doc), source=name)
    return parsed


def key(name: str) -> str:
    return f"{NAMESPACE}/{name}"


def condition(status: Doc, ctype: str) -> Doc:
    for cond in status.get("conditions") or ():
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def reason(status: Doc, ctype: str = "AgentConnected") -> str | None:
    found = condition(status, ctype).get("reason")
    return None if found is None else str(found)


# -- counting writes ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Mark:
    inode: int
    offset: int
    events: int
    at: float  # monotonic


class Ledger:
    """Status writes and Events of a local control plane since a `Mark` (see the module doc)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def mark(self) -> Mark:
        try:
            stat = self.store.journal_path.stat()
            inode, offset = stat.st_ino, stat.st_size
        except FileNotFoundError:
            inode, offset = 0, 0
        return Mark(inode, offset, len(self.store.events()), time.monotonic())

    def entries(self, since: Mark) -> list[str]:
        """Keys of the journal lines written since `since`, in order."""
        path = self.store.journal_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        if since.inode and stat.st_ino != since.inode:
            raise AssertionError("the journal rotated inside the counted window: cannot count")
        with path.open("rb") as fh:
            fh.seek(since.offset)
            text = fh.read().decode()
        return [line.partition(" ")[2] for line in text.splitlines() if line]

    def writes(self, since: Mark) -> Counter[str]:
        """Journal lines per key since `since` (status patches, plus any apply in the window)."""
        return Counter(self.entries(since))

    def events(self, since: Mark) -> list[Doc]:
        return self.store.events()[since.events :]

    def event_reasons(self, since: Mark) -> Counter[tuple[str, str, str]]:
        """(resource name, type, reason) of each Event since `since`."""
        return Counter(
            (str(e["name"]), str(e["type"]), str(e["reason"])) for e in self.events(since)
        )


# -- processes ------------------------------------------------------------------------------------
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

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.runs}.log"

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until `/readyz` says ready."""
        self.runs += 1
        self.port = free_port()
        argv = [
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
            f"127.0.0.1:{self.port}",
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
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
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
            time.sleep(0.15)  # one journal poll (0.1 s) of the local control plane in between
        self.wait(self.idle, timeout, "the bridge idle")

    def tasks(self) -> int:
        assert self.tasks_path is not None, "start the bridge with count_tasks=True"
        return int(self.tasks_path.read_text())

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


def release(client: Client) -> None:
    """Close a `tests.support.mqtt` client *and* paho's wake-up socket pair.

    paho creates that pair on the first `loop()` call and closes it only in `Client.__del__`;
    the test client and paho's callbacks form a reference cycle, so the pair waits for the cyclic
    GC, whose finalizer order may let the sockets warn first (`ResourceWarning`, an error under
    the project's warning filter). Tests that make many connections release them explicitly.
    """
    client.close()
    client.paho._reset_sockets()


# -- the positive marker --------------------------------------------------------------------------
class Marker:
    """A device the test plays itself, whose transitions show that the bridge caught up.

    To show that nothing *else* was written, a test flips the marker after the act: its birth
    (`Connected`) or its clean exit (`Shutdown`) reaches the bridge after every message the act
    caused (the broker delivers to the bridge's one connection in order), and once the marker's
    status is written and the queue is empty, every write the act could cause has happened.
    """

    def __init__(self, fab: LocalFabric, device: str = "marker") -> None:
        self.fab = fab
        self.device = device
        self.name = device  # its resource's name
        self.flips = 0
        self.client: Client | None = None

    @property
    def manifest(self) -> Manifest:
        return manifest(self.name, self.device, ["sleep", "600"])

    def flip(self, bridge: BridgeProcess, timeout: float = 15.0) -> None:
        """Connect (or cleanly disconnect) the marker; wait until written and the bridge idle."""
        self.flips += 1
        session = f"marker-{self.flips}"
        topic = self.fab.broker.topics.status(self.device)
        if self.client is None:
            self.client = connect(self.fab.broker, self.device)
            doc: Doc = {"state": "online", "session": session, "heartbeat_s": 3600, "agent": "t"}
            want = "Connected"
        else:
            doc = {"state": "offline", "session": f"marker-{self.flips - 1}", "reason": "shutdown"}
            want = "Shutdown"
        assert self.client.publish(topic, doc, retain=True), "the marker lost its connection"
        if want == "Shutdown":
            self.close()
        self.fab.wait(
            lambda: reason(self.fab.status(self.name)) == want, timeout, f"the marker {want}"
        )
        bridge.wait_idle(timeout)

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            release(client)


# -- the fabric -----------------------------------------------------------------------------------
class LocalFabric:
    """A mosquitto, bridges on one local state directory, and agents; see the module doc."""

    def __init__(self, workdir: Path, secret: bytes, devices: Iterable[str]) -> None:
        self.workdir = workdir
        self.devices = tuple(devices)
        self.state_dir = workdir / "controlplane"
        self.store = LocalStore(self.state_dir)
        self.ledger = Ledger(self.store)
        self.broker = prepare_mosquitto(workdir, secret, self.devices)
        self.bridges: list[BridgeProcess] = []
        self.agents: list[AgentProcess] = []
        self.child_pids: dict[int, int | None] = {}  # seen agent children: pid -> start time
        self.markers: list[Marker] = []

    def __enter__(self) -> Self:
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- starting ----------------------------------------------------------------------------------
    def start_bridge(self, **options: Any) -> BridgeProcess:
        bridge = BridgeProcess(
            self.broker, self.workdir, self.state_dir, name=f"bridge{len(self.bridges)}", **options
        )
        self.bridges.append(bridge)
        bridge.start()
        return bridge

    def agent(
        self, device: str, *, heartbeat: int = 1, extra: tuple[str, ...] = (), **options: Any
    ) -> Agent:
        """An agent for `device` (not started)."""
        agent = Agent(
            self.broker, self.workdir, device=device, heartbeat=heartbeat, extra=extra, **options
        )
        self.agents.append(agent)
        return agent

    def start_agent(self, device: str, **options: Any) -> Agent:
        agent = self.agent(device, **options)
        agent.start()
        return agent

    def marker(self, device: str = "marker") -> Marker:
        """A `Marker` for `device` (a name the broker knows), its resource applied."""
        marker = Marker(self, device)
        self.markers.append(marker)
        self.apply(marker.manifest)
        return marker

    # -- resources ---------------------------------------------------------------------------------
    def apply(self, *manifests: Manifest) -> None:
        self.store.apply(list(manifests))

    def status(self, name: str) -> Doc:
        loaded = self.store.load(key(name))
        assert loaded is not None, f"{name} does not exist"
        status = dict(loaded.status)
        pid = status.get("pid")
        if isinstance(pid, int):
            self.track(pid)
        return status

    def track(self, *pids: int) -> None:
        """Kill these agent children (by process group) at teardown, if they still run then."""
        for pid in pids:
            if pid not in self.child_pids:
                self.child_pids[pid] = start_time(pid)

    def generation(self, name: str) -> int:
        loaded = self.store.load(key(name))
        assert loaded is not None, f"{name} does not exist"
        return loaded.generation

    def settled(self, name: str, phase: str = "Running", connected: str = "Connected") -> bool:
        """`phase`, AgentConnected `connected`, Synced Applied at the current generation."""
        status = self.status(name)
        return (
            status.get("phase") == phase
            and reason(status) == connected
            and reason(status, "Synced") == "Applied"
            and status.get("observedGeneration") == self.generation(name)
        )

    def wait_settled(self, *names: str, timeout: float = 20.0, **want: str) -> None:
        self.wait(lambda: all(self.settled(n, **want) for n in names), timeout, f"{names} settled")

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_for(predicate, timeout, 0.02, what)
        except ConditionTimeoutError as exc:
            logs = []
            for bridge in self.bridges:
                tail = bridge.log_path.read_text(errors="replace").splitlines()[-20:]
                logs.append(f"--- {bridge.name} log (tail) ---\n" + "\n".join(tail))
            raise ConditionTimeoutError("\n".join([str(exc), *logs])) from None

    # -- teardown ----------------------------------------------------------------------------------
    def close(self) -> None:
        for marker in self.markers:
            marker.close()
        for agent in self.agents:  # all at once: each stops its children within its own bound
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents:
            agent.close()
        kill_groups(self.child_pids)
        for bridge in self.bridges:
            bridge.stop()
        self.broker.stop()
