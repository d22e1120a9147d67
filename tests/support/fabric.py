"""The whole fabric on loopback, as a user runs it: a broker, a control plane, bridges, agents.

`Fabric(workdir, broker, plane=...)` owns the processes of one test, all started from the shipped
CLI (`tests.support.processes`):

- the broker: a `BrokerProcess` from `tests.support.brokers` (mosquitto from our generated config,
  the embedded broker, a NATS node); started here unless it runs already, and then stopped here.
  `Fabric.mosquitto(workdir, secret, devices, ...)` prepares our mosquitto for `devices`.
- the control plane: `plane="local"`: a state directory read through `LocalStore` (what
  `devicefabric apply` runs), with a `Ledger` counting its writes and `Marker` devices;
  `plane="kube"`: the fake API server (`tests.support.fakeapi`; `api=` serves one configured by
  the caller), reached through `http` (as `admin`) or a kubectl (`kubectl(...)`); `plane=None`:
  no control plane (the agent's own tests, or bridges the caller makes and `adopt`s).
- bridges (`start_bridge`): `devicefabric bridge run` on that plane; a kube replica has its own
  kubeconfig (its bearer token names it in the fake's request log) and `POD_NAME`.
- agents (`agent`, `start_agent`): `devicefabric agent run` per device.
- the bridge's side of MQTT without a bridge: `observer` (every topic) and `publish_desired`,
  with waits on a device's documents (`wait_doc`, `wait_online`, `wait_report`).

Waiting is on a condition with a deadline (`wait`, failing with the bridges' log tails).
`close()` stops everything it started: agents first (all signalled at once, each then waited
for, then the children their ledger or a test recorded), the bridges, the API server, the broker.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Self

from devicefabric.agent.leftovers import start_time
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.controlplane.local.userfiles import Manifest
from devicefabric.config.topics import DeviceTopic
from devicefabric.config.wire import Desired, encode
from tests.support.brokers import BrokerProcess, prepare_mosquitto
from tests.support.desired import DEVICE
from tests.support.fakeapi import FakeApiServer, bridge_user
from tests.support.fakeapi.client import Http, dp_path
from tests.support.fakeapi.kubeconfig import kubectl
from tests.support.inbox import Message
from tests.support.ledger import Ledger, Marker
from tests.support.mqtt import Client, connect
from tests.support.processes import AgentProcess, BridgeProcess, Doc, Plane, kill_groups
from tests.support.procfs import cmdline
from tests.support.resources import condition, document, key, reason, settled
from tests.support.waiting import ConditionTimeoutError, wait_for

START_TIMEOUT: Final = 10.0
LEASE: Final = (
    "/apis/coordination.k8s.io/v1/namespaces/devicefabric-system/leases/devicefabric-bridge"
)
DEVICES_PATH: Final = "/apis/devicefabric.io/v1alpha1/devices"
LOCAL_BRIDGE_DEFAULTS: Final = {"stale_multiplier": 3.0, "write_qps": 20.0, "write_burst": 30}


class Fabric:
    """A broker, a control plane, bridges and agents; see the module doc."""

    def __init__(
        self,
        workdir: Path,
        broker: BrokerProcess,
        *,
        plane: Plane | None = None,
        api_host: str = "127.0.0.1",
        api: FakeApiServer | None = None,
    ) -> None:
        """`api_host`: where the fake API server listens (a network namespace's gateway); `api`:
        the fake API server to start and serve instead (kube plane)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.plane = plane
        self.broker = broker
        self.topics = broker.topics
        self.devices = broker.devices
        self.agents: dict[str, AgentProcess] = {}
        self.bridges: dict[str, BridgeProcess] = {}
        self.child_pids: dict[int, int | None] = {}  # agent children seen: pid -> start time
        self.markers: list[Marker] = []
        self._clients: dict[str, Client] = {}
        self.state_dir = workdir / "controlplane"
        self._store = LocalStore(self.state_dir) if plane == "local" else None
        self._ledger = Ledger(self._store) if self._store is not None else None
        self._api: FakeApiServer | None = None
        self._owns_broker = not broker.running
        if self._owns_broker:
            broker.start()
        if plane == "kube":
            api = api or FakeApiServer(bookmark_interval=0.2, host=api_host)
            self._api = api.start()
            self.http = Http(self._api.url)
            self.admin_kubeconfig = self._api.write_kubeconfig(workdir / "kubeconfig-admin")

    @classmethod
    def mosquitto(
        cls, workdir: Path, secret: bytes, devices: Iterable[str], **options: Any
    ) -> Fabric:
        """A fabric on our mosquitto generated for `devices`."""
        return cls(workdir, prepare_mosquitto(workdir, secret, devices), **options)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> LocalStore:
        assert self._store is not None, "not a local-plane fabric"
        return self._store

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "not a local-plane fabric"
        return self._ledger

    @property
    def api(self) -> FakeApiServer:
        assert self._api is not None, "not a kube-plane fabric"
        return self._api

    # -- processes ---------------------------------------------------------------------------------
    def start_bridge(
        self,
        name: str | None = None,
        *,
        ready: bool | None = None,
        stale_multiplier: float | None = None,
        write_qps: float | None = None,
        write_burst: int | None = None,
        env: Mapping[str, str] | None = None,
        **process: Any,
    ) -> BridgeProcess:
        """A bridge on this fabric's plane, started; a local one is awaited ready (`ready`).

        `process`: more of `BridgeProcess` (`count_tasks`, `prefix`, `http_host`, `extra`).
        """
        assert self.plane is not None, "a fabric without a control plane has no bridge"
        name = name or f"bridge{len(self.bridges)}"
        given = {"stale_multiplier": stale_multiplier, "write_qps": write_qps}
        given["write_burst"] = write_burst
        if self.plane == "local":
            given = {k: LOCAL_BRIDGE_DEFAULTS[k] if v is None else v for k, v in given.items()}
            process["state_dir"] = self.state_dir
        options = {f"--{k.replace('_', '-')}": str(v) for k, v in given.items() if v is not None}
        process["env"] = dict(env or {})
        if self.plane == "kube":
            user = bridge_user(name)
            kubeconfig = self.api.write_kubeconfig(self.workdir / f"kubeconfig-{name}", user=user)
            process["env"] |= {"KUBECONFIG": str(kubeconfig), "POD_NAME": name}
        bridge = BridgeProcess(
            self.broker, self.workdir, name=name, plane=self.plane, options=options, **process
        )
        self.bridges[name] = bridge
        wait = self.plane == "local" if ready is None else ready
        bridge.start(None if not wait else 20.0)
        return bridge

    def agent(self, device: str = DEVICE, **options: Any) -> AgentProcess:
        """An agent for `device` (not started); options as `AgentProcess` takes them."""
        agent = AgentProcess(self.broker, self.workdir, device=device, **options)
        self.adopt(agent)
        return agent

    def start_agent(self, device: str = DEVICE, **options: Any) -> AgentProcess:
        agent = self.agent(device, **options)
        agent.start()
        return agent

    def adopt(self, process: AgentProcess | BridgeProcess) -> None:
        """Stop `process` (made by the test) at teardown with the fabric's own."""
        if isinstance(process, BridgeProcess):
            self.bridges[process.name] = process
            return
        name = process.device
        while name in self.agents:
            name += "+"
        self.agents[name] = process

    def kill_agent(self, device: str) -> None:
        """kill -9 the agent of `device`; its children live on (killed by `close()`)."""
        if self.plane == "kube":
            self.track(*self._kube_pids())
        self.agents[device].kill()

    def track(self, *pids: int) -> None:
        """Kill these agent children (by process group) at teardown, if they still run then."""
        for pid in pids:
            if pid not in self.child_pids:
                self.child_pids[pid] = start_time(pid)

    def kubectl(
        self, binary: str, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl (`binary`) as `admin`."""
        return kubectl(binary, self.admin_kubeconfig, *args, stdin=stdin)

    # -- resources: local plane --------------------------------------------------------------------
    def apply(self, *manifests: Manifest) -> None:
        self.store.apply(list(manifests))

    def marker(self, device: str = "marker") -> Marker:
        """A `Marker` for `device` (a name the broker knows), its resource applied."""
        marker = Marker(self, device)
        self.markers.append(marker)
        self.apply(marker.manifest)
        return marker

    def status(self, name: str) -> Doc:
        loaded = self.store.load(key(name))
        assert loaded is not None, f"{name} does not exist"
        status = dict(loaded.status)
        if isinstance(pid := status.get("pid"), int):
            self.track(pid)
        return status

    def generation(self, name: str) -> int:
        loaded = self.store.load(key(name))
        assert loaded is not None, f"{name} does not exist"
        return loaded.generation

    def settled(self, name: str, phase: str = "Running", connected: str = "Connected") -> bool:
        """Local plane: `phase`, AgentConnected `connected`, Synced Applied, generation current;
        kube plane: `phase`, AgentConnected and Synced True, generation current."""
        if self.plane == "kube":
            return settled(self.get(name), phase)
        status = self.status(name)
        return (
            status.get("phase") == phase
            and reason(status) == connected
            and reason(status, "Synced") == "Applied"
            and status.get("observedGeneration") == self.generation(name)
        )

    def wait_settled(self, *names: str, timeout: float = 20.0, **want: str) -> None:
        self.wait(lambda: all(self.settled(n, **want) for n in names), timeout, f"{names} settled")

    # -- resources: kube plane ---------------------------------------------------------------------
    def create(self, name: str, device: str, command: list[str] | None = None) -> Doc:
        body = document(name, device, command or ["sleep", "300"], terminationGracePeriodSeconds=1)
        del body["metadata"]["namespace"]
        resp = self.http.create(body)
        assert resp.status == 201, resp.body
        created: Doc = resp.body
        return created

    def get(self, name: str) -> Doc:
        resp = self.http.get(dp_path(name=name))
        assert resp.status == 200, resp.body
        obj: Doc = resp.body
        return obj

    def devices_settled(self, processes: dict[str, int]) -> bool:
        """Every Device named exists, reads Connected=True and counts `processes[name]`
        DeviceProcesses (the bridge's Device writes have all landed)."""
        items = self.http.get(DEVICES_PATH).body["items"]
        seen = {d["metadata"]["name"]: (d.get("status") or {}).get("processes") for d in items}
        connected = {
            d["metadata"]["name"]
            for d in items
            if condition(d, "Connected").get("status") == "True"
        }
        return all(seen.get(n) == count and n in connected for n, count in processes.items())

    def leader(self) -> str:
        resp = self.http.get(LEASE)
        return str(resp.body["spec"]["holderIdentity"]) if resp.status == 200 else ""

    def _kube_pids(self) -> set[int]:
        """The pids the statuses name that still run a program our agents start."""
        objs = self.api.store.list_objects(self.api.custom, None)[0]
        pids = {p for o in objs if isinstance(p := (o.get("status") or {}).get("pid"), int)}
        return {p for p in pids if _is_our_child(p)}

    # -- MQTT as the bridge sees it ----------------------------------------------------------------
    def client(self, user: str) -> Client:
        """A connection as `user`, kept for the fabric's life (the observer sees everything)."""
        if user not in self._clients:
            client = connect(self.broker, user)
            if user == "observer":
                client.subscribe(self.topics.everything())
            self._clients[user] = client
        return self._clients[user]

    @property
    def observer(self) -> Client:
        return self.client("observer")

    def reconnect_clients(self) -> None:
        """After a broker restart: fresh connections for the clients made so far."""
        users = list(self._clients)
        self._close_clients()
        for user in users:
            self.client(user)

    def publish_desired(self, doc: Desired | bytes, device: str = DEVICE) -> None:
        payload = doc if isinstance(doc, bytes) else encode(doc)
        topic = self.topics.desired(device)
        assert self.client("bridge").publish(topic, payload, qos=1, retain=True)

    def messages(self, kind: str, device: str = DEVICE) -> list[Message]:
        return self.observer.inbox.messages(self.topics.device(device, DeviceTopic(kind)))

    def docs(self, kind: str, device: str = DEVICE) -> list[Doc]:
        return [json.loads(m.payload) for m in self.messages(kind, device) if m.payload]

    def wait_doc(
        self,
        kind: str,
        predicate: Callable[[Doc], bool],
        device: str = DEVICE,
        timeout: float = 5.0,
    ) -> Doc:
        """The first `kind` document (status/heartbeat/report) of `device` passing `predicate`."""

        def check(message: Message) -> bool:
            try:
                return bool(message.payload and predicate(json.loads(message.payload)))
            except (KeyError, TypeError, ValueError):
                return False

        topic = self.topics.device(device, DeviceTopic(kind))
        doc: Doc = self.observer.inbox.wait_for(topic, check, timeout=timeout).json()
        return doc

    def wait_online(
        self, device: str = DEVICE, timeout: float = START_TIMEOUT, *, not_session: str = ""
    ) -> str:
        """Wait for a birth (of a session other than `not_session`) and return its session."""
        birth = self.wait_doc(
            "status",
            lambda d: d["state"] == "online" and d["session"] != not_session,
            device,
            timeout,
        )
        return str(birth["session"])

    def wait_report(
        self, predicate: Callable[[Doc], bool], device: str = DEVICE, timeout: float = 5.0
    ) -> Doc:
        return self.wait_doc("report", predicate, device, timeout)

    # -- waiting and teardown ----------------------------------------------------------------------
    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_for(predicate, timeout, 0.02, what)
        except ConditionTimeoutError as exc:
            logs = []
            for bridge in self.bridges.values():
                tail = bridge.log_text().splitlines()[-20:]
                logs.append(f"--- {bridge.name} log (tail) ---\n" + "\n".join(tail))
            raise ConditionTimeoutError("\n".join([str(exc), *logs])) from None

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        for marker in self.markers:
            marker.close()
        self._close_clients()
        if self._api is not None:
            self.track(*self._kube_pids())
        for agent in self.agents.values():  # all at once: each stops its children in its bound
            agent.signal_stop()
        for agent in self.agents.values():
            agent.close()
        kill_groups({p: t for p, t in self.child_pids.items() if t is not None})
        for bridge in self.bridges.values():
            bridge.stop()
        if self._api is not None:
            self._api.stop()
        if self._owns_broker:
            self.broker.stop()


def _is_our_child(pid: int) -> bool:
    """A process our agents started: `sleep ...` or the sample's shell loop (all we run)."""
    argv = cmdline(pid)
    return bool(argv) and (
        argv[0].endswith(b"sleep") or (argv[0] == b"/bin/sh" and b"sleep 30" in argv[-1])
    )


@contextlib.contextmanager
def audited(workdir: Path, secret: bytes, devices: Iterable[str]) -> Iterator[Fabric]:
    """A kube-plane `Fabric` on our mosquitto, closed at exit, whose request log is then
    checked: no request our shipped RBAC does not grant, and no no-op write by a bridge."""
    from tests.support.kubeplane import denied  # noqa: PLC0415 - imports the bridge's backend

    with Fabric.mosquitto(workdir, secret, devices, plane="kube") as fab:
        yield fab
    records = fab.api.log.records()
    assert denied(records) == [], "the bridge made requests our RBAC does not grant"
    noops = [(str(r), r.json()) for r in records if r.noop and r.user != "admin"]
    assert noops == [], f"the bridge wrote a no-op: {noops}"
