"""Devices behind real lossy and partitioned links (network namespaces, veth pairs, iptables).

Each agent runs in its own namespace (`tests.faults.netns`), joined to ours by a veth pair; the
broker binds an address of its own on a hub link, the bridge (local control plane) runs in our
namespace. Faults are iptables rules inside the device namespaces: a silent drop both ways
(half-open: no RST, no FIN), and random loss. Write counts come from the control plane's journal
(`Ledger`), closed by a `Marker` flip (every write an act caused precedes the marker's).

Short by default (heartbeat 1 s, partitions of ~10 s); `FAULTS_LONG=1` holds the partition 60 s.
Measured times are printed (`-s`) for the record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.conftest import TEST_SECRET
from tests.faults.budget import LONG
from tests.faults.fabric import LocalFabric, key, manifest, reason
from tests.faults.netns import NetAgent, Network, broker_at, require_netns
from tests.support.mqtt import connect

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

HEARTBEAT: Final = 1  # s; the agent's MQTT keepalive is then its floor, 5 s
STALE: Final = 3.0  # --stale-multiplier
PARTITION: Final = 60.0 if LONG else 10.0  # s: longer than the broker's keepalive (1.5 x 5 s)
SWEEP: Final = 1.0  # the bridge's stale sweep runs at least once a second


@pytest.fixture
def network() -> Iterator[Network]:
    require_netns()
    net = Network("net")
    try:
        yield net
    finally:
        net.close()


def fabric(tmp_path: Path, net: Network, kind: str, devices: tuple[str, ...]) -> LocalFabric:
    fab = LocalFabric(tmp_path, TEST_SECRET, (*devices, "marker"))
    fab.broker = broker_at(net.broker_host, kind, tmp_path, TEST_SECRET, (*devices, "marker"))
    return fab


def net_agent(fab: LocalFabric, net: Network, device: str) -> NetAgent:
    agent = NetAgent(
        net.device(device), fab.broker, fab.workdir, device=device, heartbeat=HEARTBEAT
    )
    fab.agents.append(agent)
    agent.start()
    return agent


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_half_open_device(tmp_path: Path, network: Network, kind: str) -> None:
    """A silent drop both ways: HeartbeatTimeout within the stale window, the late will writes
    nothing, and after the heal the agent reconnects by itself: one write each way."""
    with fabric(tmp_path, network, kind, ("dev",)) as fab:
        marker = fab.marker()
        fab.apply(manifest("job", "dev", ["sleep", "600"]))
        bridge = fab.start_bridge(stale_multiplier=STALE)
        net_agent(fab, network, "dev")
        fab.wait_settled("job", timeout=30)
        pid = fab.status("job")["pid"]
        mark = fab.ledger.mark()
        watcher = connect(fab.broker, "bridge")
        watcher.subscribe(fab.broker.topics.status("dev"))
        watcher.inbox.clear()

        link = network.device("dev")
        link.partition()
        cut = time.monotonic()
        fab.wait(lambda: reason(fab.status("job")) == "HeartbeatTimeout", 20, "HeartbeatTimeout")
        detected = time.monotonic() - cut
        assert detected <= STALE * HEARTBEAT + SWEEP + 2.0, detected  # +2 s: a loaded machine
        # the broker's keepalive fires the will of the silent session; it must write nothing
        will = watcher.inbox.wait_for(
            predicate=lambda m: m.json().get("reason") == "lost", timeout=PARTITION + 10
        )
        will_after = time.monotonic() - cut
        remaining = PARTITION - (time.monotonic() - cut)
        if remaining > 0:
            fab.wait(lambda: time.monotonic() - cut >= PARTITION, remaining + 1, "the partition")
        marker.flip(bridge)
        assert fab.ledger.writes(mark) == Counter({key("job"): 1, key("marker"): 1}), (
            [(e["reason"], e.get("message")) for e in fab.ledger.events(mark)],
            fab.status("job")["conditions"],
        )

        link.heal()
        healed = time.monotonic()
        fab.wait_settled("job", timeout=30)
        back = time.monotonic() - healed
        assert fab.status("job")["pid"] == pid  # the process never stopped
        marker.flip(bridge)
        assert fab.ledger.writes(mark) == Counter({key("job"): 2, key("marker"): 2})
        watcher.close()
        print(
            f"\n[{kind}] half-open: HeartbeatTimeout after {detected:.1f}s, will after "
            f"{will_after:.1f}s ({will.json().get('session')}), reconnected {back:.1f}s after heal"
        )
