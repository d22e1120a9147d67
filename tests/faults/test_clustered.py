"""The fabric on a 3-node NATS cluster: kill -9 of one node moves its devices, loses nothing.

Three `nats-server` nodes from our generator (MQTT over JetStream, retained messages and sessions
replicated 3 times), the shipped bridge (local control plane) on node 2, and three agents given
the cluster's nodes as a `--broker` list, each starting on a different node in turn: `ca` and
`cc` on node 0, `cb` on node 1. Then node 0 is killed with SIGKILL, as a machine would die.

What must hold (and is asserted):
- `ca` and `cc` reconnect through a surviving node (a new session's birth reaches the bridge);
- no process on any device is stopped or restarted (same pids, still alive): the desired
  documents (written through node 2) survive as JetStream replicas, and the replay a moved agent
  gets is the document it already runs;
- `cb`, whose node survived, costs no status write at all; the moved devices cost at most one
  write down and one up each (a reconnect slower than the stale window shows, as on one broker);
- a desired change made after the kill reaches a moved device and is reported Running at its new
  generation, in one settle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.fabric import Fabric
from tests.support.nats import NatsCluster, nats_cluster
from tests.support.procfs import alive
from tests.support.resources import key, manifest

pytestmark = [pytest.mark.faults, pytest.mark.nats]

SECRET: Final = b"clustered-fabric-secret-0123456789"
DEVICES: Final = ("ca", "cb", "cc")
START: Final = {"ca": 0, "cb": 1, "cc": 0}  # the node each agent tries first
SLEEP: Final = ["/bin/sleep", "300"]
HEARTBEAT: Final = 1
STALE_MULTIPLIER: Final = 8.0  # 8 s: JetStream re-elects its leaders within it on loopback


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "cluster", SECRET, DEVICES) as running:
        yield running


def _urls(cluster: NatsCluster, first: int) -> str:
    nodes = cluster.nodes
    order = [nodes[(first + k) % len(nodes)] for k in range(len(nodes))]
    return ",".join(node.url for node in order)


def test_kill_9_of_a_node_moves_its_devices_and_loses_nothing(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    victim, _, bridge_node = cluster.nodes
    with Fabric(tmp_path / "fabric", bridge_node, plane="local") as fab:
        fab.apply(*(manifest(f"p-{d}", d, SLEEP) for d in DEVICES))
        bridge = fab.start_bridge(stale_multiplier=STALE_MULTIPLIER)
        for device in DEVICES:
            fab.start_agent(device, heartbeat=HEARTBEAT, broker_urls=_urls(cluster, START[device]))
        names = [f"p-{d}" for d in DEVICES]
        fab.wait_settled(*names, timeout=40.0)
        pids = {name: fab.status(name)["pid"] for name in names}
        moved = ("ca", "cc")
        view = bridge.devices()
        before = {d: view[d]["session"] for d in moved}  # the sessions the bridge knows now
        mark = fab.ledger.mark()
        killed = time.monotonic()
        victim.kill()

        def reborn() -> bool:
            now = bridge.devices()
            return all(
                now[d]["session"] != before[d] and now[d]["state"] == "connected" for d in moved
            )

        fab.wait(reborn, 30.0, "the moved devices connected in new sessions")
        moved_after = time.monotonic() - killed
        fab.wait_settled(*names, timeout=30.0)
        writes = fab.ledger.writes(mark)
        print(f"moved devices reborn {moved_after:.1f}s after the kill; writes {dict(writes)}")
        assert writes[key("p-cb")] == 0, "a device whose node survived was written"
        for name in ("p-ca", "p-cc"):
            assert writes[key(name)] <= 2, f"{name}: {writes[key(name)]} writes for one move"
        assert {name: fab.status(name)["pid"] for name in names} == pids
        assert all(alive(pid) for pid in pids.values())

        generation = fab.generation("p-ca")
        fab.apply(manifest("p-ca", "ca", [*SLEEP[:1], "301"]))
        fab.wait(
            lambda: (
                fab.status("p-ca").get("observedGeneration") == generation + 1
                and fab.settled("p-ca")
            ),
            30.0,
            "the change made after the kill reported Running",
        )
        assert fab.status("p-ca")["pid"] != pids["p-ca"]
