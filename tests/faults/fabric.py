"""The whole fabric as separate processes, for the fault scenarios.

`LocalFabric(workdir, secret, devices)` owns what an operator runs on one machine: a real
mosquitto generated from our broker config for `devices`, `devicefabric bridge run
--control-plane local` as a subprocess (`BridgeProcess`, killable with -9 and restartable over
the same state directory), and `devicefabric agent run` per device (`tests.agent.fabric`'s
`AgentProcess`, or `Agent` when a test needs the clock skewed, a file-size limit or its log
through a pipe); those process wrappers live in `processes.py` and are re-exported here.
Resources are applied through `LocalStore`, the code `devicefabric apply` runs.

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

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import yaml

from devicefabric.agent.leftovers import start_time
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.controlplane.local.userfiles import Manifest, parse_manifests
from devicefabric.config.resource import API_VERSION, KIND
from tests.agent.fabric import AgentProcess
from tests.faults.processes import (
    Agent,
    BridgeProcess,
    Doc,
    agent_log,
    group_members,
    kill_groups,
    logged,
    open_fds,
    rss_kib,
    running,
    threads,
)
from tests.support.brokers import BrokerProcess, prepare_mosquitto
from tests.support.mqtt import Client, connect
from tests.support.waiting import ConditionTimeoutError, wait_for

NAMESPACE: Final = "default"
__all__ = [
    "Agent",
    "BridgeProcess",
    "Doc",
    "Ledger",
    "LocalFabric",
    "Mark",
    "Marker",
    "agent_log",
    "condition",
    "group_members",
    "key",
    "logged",
    "manifest",
    "open_fds",
    "reason",
    "release",
    "rss_kib",
    "running",
    "threads",
]


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

    def mark(self, timeout: float = 5.0) -> Mark:
        """The journal's end, once it has caught up with the store's revision: a write whose
        status file is already readable (what the caller waited for) may not be journaled yet,
        and would otherwise be counted inside the window."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.store.journal_path.read_bytes()
                inode = self.store.journal_path.stat().st_ino
            except FileNotFoundError:
                data, inode = b"", 0
            lines = data.splitlines()
            last = int(lines[-1].split(b" ", 1)[0]) if lines else 0
            if last >= self.store.revision() or time.monotonic() > deadline:
                return Mark(inode, len(data), len(self.store.events()), time.monotonic())
            time.sleep(0.005)

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

    def event_reasons(
        self, since: Mark, *, exclude: Iterable[str] = ()
    ) -> Counter[tuple[str, str, str]]:
        """(resource name, type, reason) of each Event since `since`, but `exclude`d names'."""
        skip = set(exclude)
        return Counter(
            (str(e["name"]), str(e["type"]), str(e["reason"]))
            for e in self.events(since)
            if e["name"] not in skip
        )


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

    def __init__(
        self,
        workdir: Path,
        secret: bytes,
        devices: Iterable[str],
        *,
        broker: BrokerProcess | None = None,
    ) -> None:
        """`broker`: one the caller runs (a NATS cluster node); default: our own mosquitto."""
        self.workdir = workdir
        self.devices = tuple(devices)
        self.state_dir = workdir / "controlplane"
        self.store = LocalStore(self.state_dir)
        self.ledger = Ledger(self.store)
        self.owns_broker = broker is None
        self.broker = prepare_mosquitto(workdir, secret, self.devices) if broker is None else broker
        self.bridges: list[BridgeProcess] = []
        self.agents: list[AgentProcess] = []
        self.child_pids: dict[int, int | None] = {}  # seen agent children: pid -> start time
        self.markers: list[Marker] = []

    def __enter__(self) -> Self:
        if self.owns_broker:
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
        if self.owns_broker:
            self.broker.stop()
