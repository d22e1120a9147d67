"""The agent as a user runs it (`python -m devicefabric agent run ...`), and the fabric around it.

- `AgentProcess`: one agent subprocess against a `BrokerProcess`; logs (json) to a file; `kill()`
  (SIGKILL), `terminate()` (SIGTERM, returns the exit code), and teardown kills it and every child
  pid a test saw.
- `Fabric`: a broker plus an observer watching `fabric/v1/#` and the `bridge` user publishing
  `desired` documents, with waits on reports and statuses that return the parsed JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from devicefabric.agent.leftovers import CHILDREN_FILE, start_time
from devicefabric.config.topics import DeviceTopic
from devicefabric.config.wire import Desired, encode
from tests.agent.helpers import DEVICE, alive, kill_all
from tests.support.brokers import BrokerProcess
from tests.support.mqtt import Client, Message, connect

START_TIMEOUT: Final = 10.0
Doc = dict[str, Any]


class AgentProcess:
    """One `devicefabric agent run` subprocess."""

    def __init__(
        self,
        broker: BrokerProcess,
        workdir: Path,
        *,
        device: str = DEVICE,
        heartbeat: int = 1,
        extra: tuple[str, ...] = (),
        password_file: Path | None = None,
        broker_urls: str | None = None,
    ) -> None:
        self.broker = broker
        self.device = device
        self.state_dir = workdir / f"state-{device}"
        self.workdir = workdir
        self.argv = [
            sys.executable,
            "-m",
            "devicefabric",
            "--log-format",
            "json",
            "agent",
            "run",
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
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.pids: list[int] = []  # children seen by the test, killed at teardown

    @property
    def log_path(self) -> Path:
        return self.workdir / f"agent-{self.device}-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.workdir,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """kill -9: no clean shutdown; the broker must fire the will."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log_lines(self, run: int | None = None) -> list[Doc]:
        path = self.workdir / f"agent-{self.device}-{run or self.runs}.log"
        lines = []
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        """Teardown: a clean stop if possible (the agent stops its children), then SIGKILL, then
        every child pid the test saw or the agent's ledger still records."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        recorded: list[int] = []
        with contextlib.suppress(OSError, ValueError):
            ledger = json.loads((self.state_dir / CHILDREN_FILE).read_text())
            recorded = [int(p) for p, t in ledger.items() if start_time(int(p)) == int(t)]
        kill_all([*self.pids, *recorded])


class Fabric:
    """A broker, an observer of everything, the bridge user, and the agents of one test."""

    def __init__(self, broker: BrokerProcess, workdir: Path) -> None:
        self.broker = broker
        self.workdir = workdir
        self.topics = broker.topics
        self.observer = self._observer()
        self.bridge = connect(broker, "bridge")
        self.agents: list[AgentProcess] = []

    def _observer(self) -> Client:
        client = connect(self.broker, "observer")
        client.subscribe(self.topics.everything())
        return client

    def reconnect_clients(self) -> None:
        """After a broker restart: fresh observer and bridge connections."""
        for client in (self.observer, self.bridge):
            client.close()
        self.observer = self._observer()
        self.bridge = connect(self.broker, "bridge")

    def agent(self, **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(self.broker, self.workdir, **kwargs)
        self.agents.append(agent)
        return agent

    def publish_desired(self, doc: Desired | bytes, device: str = DEVICE) -> None:
        payload = doc if isinstance(doc, bytes) else encode(doc)
        assert self.bridge.publish(self.topics.desired(device), payload, qos=1, retain=True)

    # -- observing -----------------------------------------------------------------------------
    def messages(self, kind: str, device: str = DEVICE) -> list[Message]:
        return self.observer.inbox.messages(self.topics.device(device, _kind(kind)))

    def docs(self, kind: str, device: str = DEVICE) -> list[Doc]:
        return [json.loads(m.payload) for m in self.messages(kind, device) if m.payload]

    def wait(
        self,
        kind: str,
        predicate: Callable[[Doc], bool],
        device: str = DEVICE,
        timeout: float = 5.0,
    ) -> Doc:
        """The first `kind` document (status/heartbeat/report) of `device` passing `predicate`."""

        def check(message: Message) -> bool:
            if not message.payload:
                return False
            try:
                return bool(predicate(json.loads(message.payload)))
            except (KeyError, TypeError, ValueError):
                return False

        topic = self.topics.device(device, _kind(kind))
        message = self.observer.inbox.wait_for(topic, check, timeout=timeout)
        doc: Doc = json.loads(message.payload)
        return doc

    def wait_online(
        self, device: str = DEVICE, timeout: float = START_TIMEOUT, *, not_session: str = ""
    ) -> str:
        """Wait for a birth (of a session other than `not_session`) and return its session."""
        birth = self.wait(
            "status",
            lambda d: d["state"] == "online" and d["session"] != not_session,
            device,
            timeout,
        )
        return str(birth["session"])

    def wait_report(
        self, predicate: Callable[[Doc], bool], device: str = DEVICE, timeout: float = 5.0
    ) -> Doc:
        return self.wait("report", predicate, device, timeout)

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        for client in (self.observer, self.bridge):
            with contextlib.suppress(Exception):
                client.close()


def _kind(kind: str) -> DeviceTopic:
    return DeviceTopic(kind)


@contextlib.contextmanager
def fabric(broker: BrokerProcess, workdir: Path) -> Iterator[Fabric]:
    fab = Fabric(broker, workdir)
    try:
        yield fab
    finally:
        fab.close()


def running_pids(report: Doc) -> dict[str, int]:
    """`{key: pid}` of the processes a report shows Running."""
    return {
        key: int(proc["pid"])
        for key, proc in report["processes"].items()
        if proc.get("phase") == "Running" and "pid" in proc
    }


def wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"still alive: {[p for p in pids if alive(p)]}")
        time.sleep(0.02)
