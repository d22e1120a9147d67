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
from tests.faults.netns import (
    Network,
    broker_at,
    netem_available,
    scenario_network,
)
from tests.support.fabric import Fabric
from tests.support.mqtt import connect
from tests.support.processes import AgentProcess
from tests.support.procfs import alive
from tests.support.resources import key, manifest, reason

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

HEARTBEAT: Final = 1  # s; the agent's MQTT keepalive is then its floor, 5 s
STALE: Final = 3.0  # --stale-multiplier
PARTITION: Final = 60.0 if LONG else 10.0  # s: longer than the broker's keepalive (1.5 x 5 s)
SOME_PARTITION: Final = 60.0 if LONG else 6.0  # s: the partition of some devices
KEEPALIVE: Final = 5  # the agent's MQTT keepalive at this heartbeat (its floor)
NOTICE: Final = (
    2 * KEEPALIVE + 3.0
)  # paho: a PINGREQ after keepalive idle, then keepalive to answer
SWEEP: Final = 1.0  # the bridge's stale sweep runs at least once a second
LOSSY_STALE: Final = 5.0  # lossy links: TCP retransmits may hold a heartbeat back ~2 s
MAX_SETTLE_WRITES: Final = 4  # apply + at most three status writes to Running
QUIET: Final = 30.0 if LONG else 5.0  # s of heartbeats over loss without a false disconnect


@pytest.fixture
def network() -> Iterator[Network]:
    yield from scenario_network("net")


def fabric(tmp_path: Path, net: Network, kind: str, devices: tuple[str, ...]) -> Fabric:
    broker = broker_at(net.broker_host, kind, tmp_path, TEST_SECRET, (*devices, "marker"))
    return Fabric(tmp_path, broker, plane="local")


def net_agent(fab: Fabric, net: Network, device: str) -> AgentProcess:
    """The agent of `device` inside its link's namespace."""
    prefix = net.device(device).exec_argv([])
    return fab.start_agent(device, heartbeat=HEARTBEAT, prefix=prefix)


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_half_open_device(tmp_path: Path, network: Network, kind: str) -> None:
    """A silent drop both ways: HeartbeatTimeout within the stale window, the late will writes
    nothing, and after the heal the agent reconnects by itself: one write each way."""
    with fabric(tmp_path, network, kind, ("dev",)) as fab:
        marker = fab.marker()
        fab.apply(manifest("job", "dev", ["sleep", "600"]))
        bridge = fab.start_bridge(stale_multiplier=STALE)
        agent = net_agent(fab, network, "dev")
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
            match=lambda m: m.json().get("reason") == "lost", timeout=PARTITION + 10
        )
        will_after = time.monotonic() - cut
        # the agent notices its dead connection by itself: no PINGRESP within its keepalive
        fab.wait(
            lambda: agent.logged(msg="connection lost"),
            max(1.0, NOTICE - (time.monotonic() - cut)),
            "the agent noticing its dead connection",
        )
        noticed = time.monotonic() - cut
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
            f"{will_after:.1f}s, agent noticed after {noticed:.1f}s ({will.json().get('session')}), reconnected {back:.1f}s after heal"
        )


def test_partition_of_some_devices(tmp_path: Path, network: Network) -> None:
    """A third of the devices cut off, then healed: one write down and one up per resource, their
    processes never stopped, and a desired change made during the partition arrives after it."""
    devices = tuple(f"d{i}" for i in range(10 if LONG else 6))
    cut_off = devices[: max(1, round(len(devices) * 0.3))]
    with fabric(tmp_path, network, "mosquitto", devices) as fab:
        marker = fab.marker()
        fab.apply(*(manifest(f"job-{d}", d, ["sleep", "600"]) for d in devices))
        bridge = fab.start_bridge(stale_multiplier=STALE)
        for device in devices:
            net_agent(fab, network, device)
        fab.wait_settled(*(f"job-{d}" for d in devices), timeout=60)
        pids = {d: fab.status(f"job-{d}")["pid"] for d in devices}
        mark = fab.ledger.mark()

        for device in cut_off:
            network.device(device).partition()
        cut = time.monotonic()
        fab.wait(
            lambda: all(reason(fab.status(f"job-{d}")) == "HeartbeatTimeout" for d in cut_off),
            20,
            "HeartbeatTimeout of the partitioned devices",
        )
        detected = time.monotonic() - cut
        changed = cut_off[0]
        fab.apply(manifest(f"job-{changed}", changed, ["sleep", "601"]))
        remaining = SOME_PARTITION - (time.monotonic() - cut)
        fab.wait(lambda: time.monotonic() - cut >= SOME_PARTITION, remaining + 1, "the partition")
        assert all(alive(pids[d]) for d in cut_off)  # edge autonomy: nothing stopped
        marker.flip(bridge)
        during = fab.ledger.writes(mark)

        for device in cut_off:
            network.device(device).heal()
        healed = time.monotonic()
        fab.wait_settled(*(f"job-{d}" for d in devices), timeout=30)
        back = time.monotonic() - healed
        assert fab.status(f"job-{changed}")["observedGeneration"] == 2
        assert all(fab.status(f"job-{d}")["pid"] == pids[d] for d in devices if d != changed)
        marker.flip(bridge)
        writes = fab.ledger.writes(mark)
        # per untouched partitioned resource: HeartbeatTimeout, then Connected; none elsewhere
        want = Counter({key(f"job-{d}"): 2 for d in cut_off if d != changed})
        want[key("marker")] = 2
        assert writes - Counter({key(f"job-{changed}"): writes[key(f"job-{changed}")]}) == want
        changed_key = key(f"job-{changed}")
        print(
            f"\npartition of {len(cut_off)}/{len(devices)} for {SOME_PARTITION:.0f}s: timeouts after "
            f"{detected:.1f}s, settled {back:.1f}s after heal; changed resource wrote "
            f"{writes[changed_key]} ({during[changed_key]} during, apply included): {writes}"
        )


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_lossy_links(tmp_path: Path, network: Network, kind: str) -> None:
    """20% loss each way on every agent link (plus 300 +/- 100 ms where netem exists): desired
    reaches every device, and no disconnect is written while heartbeats get through."""
    devices = ("l0", "l1", "l2")
    shaped = netem_available()
    with fabric(tmp_path, network, kind, devices) as fab:
        marker = fab.marker()
        bridge = fab.start_bridge(stale_multiplier=LOSSY_STALE)
        for device in devices:
            link = network.device(device)
            link.loss(0.2)
            if shaped:
                link.shape("delay", "300ms", "100ms")
            net_agent(fab, network, device)

        def connected() -> bool:
            view = bridge.devices()
            return all(view.get(d, {}).get("state") == "connected" for d in devices)

        fab.wait(connected, 30, "every agent connected over the lossy links")
        names = [f"job-{d}-{i}" for d in devices for i in range(3)]
        mark = fab.ledger.mark()
        start = time.monotonic()
        fab.apply(*(manifest(n, n.split("-")[1], ["sleep", "600"]) for n in names))
        arrived: dict[str, float] = {}

        def all_arrived() -> bool:
            for name in names:
                if name not in arrived and fab.settled(name):
                    arrived[name] = time.monotonic() - start
            return len(arrived) == len(names)

        fab.wait(all_arrived, 60, "every resource settled over the lossy links")
        quiet = time.monotonic()
        fab.wait(lambda: time.monotonic() - quiet >= QUIET, QUIET + 1, "heartbeats over loss")
        marker.flip(bridge)
        events = Counter(e["reason"] for e in fab.ledger.events(mark))
        assert not {"HeartbeatTimeout", "ConnectionLost"} & set(events), events
        times = sorted(arrived.values())
        writes = fab.ledger.writes(mark)
        # the apply, then at most one write per status transition (Synced, pid, Running): the
        # bridge coalesces transitions queued together, so 1-3 status writes, never a duplicate
        assert writes[key("marker")] == 1
        assert all(2 <= writes[key(n)] <= MAX_SETTLE_WRITES for n in names), writes
        print(
            f"\n[{kind}] 20% loss{' + netem delay' if shaped else ''}: propagation p50 "
            f"{times[len(times) // 2]:.2f}s p99/max {times[-1]:.2f}s; writes {sorted(writes.values())}"
        )


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_bridge_partitioned_from_the_broker(tmp_path: Path, network: Network, kind: str) -> None:
    """The bridge's own link goes silent (devices keep talking to the broker): no device is blamed
    for it (zero writes while cut off), the bridge notices by its probe and reconnects after the
    heal, and only what really changed meanwhile is written, once."""
    devices = ("bp0", "bp1")
    with fabric(tmp_path, network, kind, devices) as fab:
        fab.apply(*(manifest(f"job-{d}", d, ["sleep", "600"]) for d in devices))
        bridge_link = network.device("bridge")
        bridge = fab.start_bridge(
            stale_multiplier=STALE,
            prefix=bridge_link.exec_argv([]),
            http_host=bridge_link.address,
        )
        marker = fab.marker()
        agents = {d: net_agent(fab, network, d) for d in devices}
        fab.wait_settled(*(f"job-{d}" for d in devices), timeout=30)
        pid = fab.status("job-bp0")["pid"]
        mark = fab.ledger.mark()

        bridge_link.partition_from(fab.broker.host)
        cut = time.monotonic()
        fab.wait(lambda: bridge.readyz().get("mqtt") == "down", 30, "the bridge noticing")
        noticed = time.monotonic() - cut
        agents["bp1"].terminate()  # a real change while the bridge is cut off: a clean shutdown
        stale = STALE * HEARTBEAT + SWEEP + 2.0
        fab.wait(lambda: time.monotonic() - cut >= noticed + stale, stale + 5, "a stale window")
        assert not fab.ledger.writes(mark), "a device was blamed for the bridge's own outage"

        bridge_link.heal()
        healed = time.monotonic()
        fab.wait(lambda: reason(fab.status("job-bp1")) == "Shutdown", 40, "the shutdown written")
        back = time.monotonic() - healed
        marker.flip(bridge)
        writes = fab.ledger.writes(mark)
        assert writes == Counter({key("job-bp1"): 1, key("marker"): 1}), writes
        assert reason(fab.status("job-bp0")) == "Connected"
        assert fab.status("job-bp0")["pid"] == pid
        print(
            f"\n[{kind}] bridge cut off: noticed after {noticed:.1f}s (probe), "
            f"0 writes while cut off, the real change written {back:.1f}s after the heal; "
            f"writes {dict(writes)}"
        )
