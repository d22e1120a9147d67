"""A 3-node NATS server cluster (MQTT over JetStream) on free loopback ports, from our generator.

`nats_cluster(...)` writes the node configs with `broker.nats.generate` (bcrypt at the lowest cost,
to keep the start fast) and runs `/usr/sbin/nats-server -c nats-<k>.conf` per node: each node is a
`BrokerProcess` of kind `nats` whose `port` is its MQTT listener, so every MQTT helper of the test
support works on any node. The cluster is ready when a real MQTT CONNECT succeeds on every node
(JetStream must have elected its leaders first). All nodes are stopped on exit. The system
nats-server (127.0.0.1:4222) is never used: every port is a free one.

nats-server missing: `require_nats()` skips, except under `CI=true`, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devicefabric.broker.nats import NatsNode, bcrypt_hasher, generate
from devicefabric.config.names import OBSERVER_USER
from devicefabric.config.settings import HostPort
from tests.support.brokers import HOST, BrokerProcess
from tests.support.mqtt import connect
from tests.support.ports import free_port
from tests.support.requires import missing

NATS_SERVER: Final = Path(os.environ.get("DEVICEFABRIC_TEST_NATS", "/usr/sbin/nats-server"))
NODES: Final = 3
READY_TIMEOUT: Final = 30.0


def nats_available() -> bool:
    return NATS_SERVER.is_file() and os.access(NATS_SERVER, os.X_OK)


def require_nats() -> None:
    """Skip when nats-server is missing, but fail under CI=true (CI must run the cluster)."""
    if nats_available():
        return
    message = f"nats-server not found at {NATS_SERVER}: install `nats-server`"
    missing(message)


@dataclass(frozen=True, slots=True)
class NatsCluster:
    nodes: tuple[BrokerProcess, ...]
    start_seconds: float

    def wait_serving(self, node: BrokerProcess, timeout: float = READY_TIMEOUT) -> None:
        """Until an MQTT CONNECT (as the observer) succeeds on `node`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                connect(node, OBSERVER_USER, client_id="observer_ready", timeout=2.0).close()
            except (AssertionError, OSError):  # refused, no CONNACK yet, or not listening
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            else:
                return


def prepare_nats(
    base: Path, secret: bytes, devices: Iterable[str], *, revoked: Iterable[str] = ()
) -> tuple[BrokerProcess, ...]:
    workdir = base / "nats"
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = [
        NatsNode(
            name=f"nats-{k}",
            client=HostPort(HOST, free_port()),
            cluster=HostPort(HOST, free_port()),
            mqtt=HostPort(HOST, free_port()),
            store_dir=workdir / f"js-{k}",
        )
        for k in range(NODES)
    ]
    devices = tuple(devices)
    # A cluster name of its own: a node of another test's cluster (in another xdist worker) that
    # dials a route port this cluster reused can never merge the two (the route password, derived
    # from a secret tests may share, would not stop it).
    paths = generate(
        workdir,
        nodes,
        devices,
        secret,
        revoked=revoked,
        hasher=bcrypt_hasher(rounds=4),
        cluster_name=f"test-{uuid.uuid4().hex[:12]}",
    )
    processes = []
    for node, conf in zip(nodes, paths, strict=True):
        node_dir = workdir / node.name
        node_dir.mkdir(exist_ok=True)
        argv = [str(NATS_SERVER), "-c", str(conf)]
        process = BrokerProcess(
            "nats", argv, node.mqtt.port, secret, node_dir, devices=devices, revoked=tuple(revoked)
        )
        processes.append(process)
    return tuple(processes)


@contextlib.contextmanager
def nats_cluster(
    base: Path, secret: bytes, devices: Iterable[str], *, revoked: Iterable[str] = ()
) -> Iterator[NatsCluster]:
    """Three nodes, started together, ready when each serves MQTT; all stopped on exit."""
    require_nats()
    nodes = prepare_nats(base, secret, devices, revoked=revoked)
    started = time.monotonic()
    try:
        for node in nodes:
            node.start()
        cluster = NatsCluster(nodes, 0.0)
        for node in nodes:
            cluster.wait_serving(node)
        yield NatsCluster(nodes, time.monotonic() - started)
    finally:
        for node in nodes:
            node.stop()
