"""Facts of the 3-node NATS cluster the fabric relies on, shown over real MQTT connections.

- A takeover of a device's client id on *another* node closes the old connection without its will:
  the session rule (a status document names its session; the bridge ignores an older session's
  offline) tolerates it, because the new connection's birth is the last word and no `lost` is
  published at all.
- kill -9 of a node: the retained desired document written through it survives (JetStream
  replicas), a device reconnects through a surviving node, receives it, and new CONNECTs keep
  working (stream_replicas = 3). For a few seconds after the kill a SUBSCRIBE may get a failure
  SUBACK (0x80) while JetStream re-elects the stream leaders: the client must retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from devicefabric.broker.nats import NatsNode, bcrypt_hasher, generate
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from devicefabric.config.settings import HostPort, parse_hostport
from devicefabric.config.topics import Topics
from tests.support.brokers import HOST, BrokerProcess
from tests.support.mqtt import Client, Will, barrier, connect
from tests.support.nats import NATS_SERVER, NatsCluster, nats_cluster
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.nats

SECRET: Final = b"nats-cluster-secret-0123456789"
T: Final = Topics()
DEVICES: Final = ("take-a", "kill-a")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    base: Path = tmp_path_factory.mktemp("nats-cluster")
    with nats_cluster(base, SECRET, DEVICES) as running:
        print(f"3-node cluster serving MQTT after {running.start_seconds:.1f}s")
        yield running


def _observer(cluster: NatsCluster, node: int) -> Client:
    client = connect(cluster.nodes[node], OBSERVER_USER, client_id=f"observer_{node}")
    assert not client.subscribe(T.everything()).is_failure  # at QoS 0: `connect` knows NATS
    return client


def test_a_takeover_on_another_node_closes_the_old_connection_without_its_will(
    cluster: NatsCluster,
) -> None:
    name = "take-a"
    a, b, _ = cluster.nodes
    with _observer(cluster, 2) as observer:
        old = connect(a, name, will=Will(T.status(name), b"old-lost", retain=True))
        try:
            assert old.publish(T.status(name), b"old-online", retain=True)
            observer.inbox.wait_for(T.status(name), lambda m: m.payload == b"old-online")
            with connect(b, name) as new:
                assert old.disconnected.wait(10.0), "the old connection was left open"
                assert new.publish(T.status(name), b"new-online", retain=True)
                barrier(new, T.heartbeat(name), [observer])
            payloads = [m.payload for m in observer.inbox.messages(T.status(name))]
            assert b"old-lost" not in payloads  # no will: nothing for the session rule to reject
            assert payloads[-1] == b"new-online"
        finally:
            old.close()


def test_kill_9_of_a_node_loses_no_desired_and_devices_reconnect_elsewhere(
    cluster: NatsCluster,
) -> None:
    name = "kill-a"
    victim, survivor, _ = cluster.nodes
    with connect(victim, BRIDGE_USER, client_id="bridge_kill") as bridge:
        assert bridge.publish(T.desired(name), b"desired-1", retain=True)
    device = connect(victim, name)
    killed = time.monotonic()
    victim.kill()
    try:
        assert device.disconnected.wait(10.0)
        noticed = time.monotonic() - killed
        attempts = 0
        deadline = killed + 30.0
        while True:  # reconnect through a surviving node until CONNECT and SUBSCRIBE succeed
            attempts += 1
            try:
                again = connect(survivor, name, timeout=2.0)
            except (AssertionError, OSError):
                again = None
            if again is not None and not again.subscribe(T.desired(name)).is_failure:
                break
            if again is not None:  # SUBACK 0x80 while JetStream re-elects its leaders
                again.close()
            assert time.monotonic() < deadline, "no working session on a surviving node"
            time.sleep(0.2)
        reconnected = time.monotonic() - killed
        with again:
            got = again.inbox.wait_for(T.desired(name))
            assert (got.payload, got.retain) == (b"desired-1", True)
        print(
            f"kill -9: lost after {noticed:.2f}s, reconnected through a surviving node after "
            f"{reconnected:.2f}s ({attempts} CONNECTs)"
        )
    finally:
        device.close()
        victim.start()
        cluster.wait_serving(victim)


def test_a_node_without_the_route_password_cannot_join_the_cluster(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """A stray node of the same cluster name dialing a member's route port is refused."""
    member = cluster.nodes[2]  # never killed by the other stories
    conf = json.loads(Path(member.argv[-1]).read_text())
    route = parse_hostport(conf["cluster"]["listen"], "cluster")
    stray = NatsNode(
        name="stray-0",
        client=HostPort(HOST, free_port()),
        cluster=HostPort(HOST, free_port()),
        mqtt=HostPort(HOST, free_port()),
        store_dir=tmp_path / "js-stray",
    )
    target = NatsNode("nats-0", route, route, route, tmp_path / "unused")
    paths = generate(
        tmp_path,
        [stray, target],
        [],
        b"another-secret-0123456789abcdef",
        hasher=bcrypt_hasher(rounds=4),
        cluster_name=conf["cluster"]["name"],
    )
    intruder = BrokerProcess(
        "nats", [str(NATS_SERVER), "-c", str(paths[0])], stray.mqtt.port, b"x" * 32, tmp_path
    )
    intruder.start()
    try:
        wait_for(
            lambda: (
                "authorization violation" in member.log_text().lower()
                or "authentication error" in member.log_text().lower()
            ),
            timeout=15.0,
            what="the member refuses the stray node's route",
        )
        wait_for(
            lambda: "route error 'authorization violation'" in intruder.log_text().lower(),
            timeout=15.0,
            what="the stray node is told its route is refused",
        )
    finally:
        intruder.stop()
