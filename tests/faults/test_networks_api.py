"""Scenario 5 of the real-network suite: the bridge cut off from the API server while devices churn.

The bridge (`--control-plane kube`) runs in a network namespace of its own; the fake API server
listens on our end of that namespace's veth pair, mosquitto on the hub address (both reachable
only over links the test made). After every resource is Running, iptables inside the bridge's
namespace silently drops everything to and from the API server's address (the broker stays
reachable), every agent is killed (the broker fires their wills: one real transition per
resource), and the cut is healed after a while. What must hold, from the fake's request log:
every resource ends `AgentConnected=False/ConnectionLost` (nothing lost), with exactly one status
write each after the mark (no duplicate), and the writes after the heal never exceed the budget
(`--write-qps` + `--write-burst` in any one second).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.conftest import TEST_SECRET
from tests.faults.netns import Network, broker_at, scenario_network
from tests.support.fabric import Fabric
from tests.support.resources import condition
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

DEVICES: Final = tuple(f"api-{i}" for i in range(6))
QPS: Final = 2
BURST: Final = 2
CUT: Final = 6.0  # s the API server is unreachable (within the Lease's renew deadline)


@pytest.fixture
def network() -> Iterator[Network]:
    yield from scenario_network("api")


def _status_writes(fab: Fabric, since: float) -> list[tuple[float, str]]:
    return [
        (r.monotonic, r.info.name or "")
        for r in fab.api.log.records()
        if r.user.startswith("system:serviceaccount")
        and r.monotonic >= since
        and r.info.verb == "patch"
        and r.info.subresource == "status"
        and r.info.resource == "deviceprocesses"
        and r.status < 300
    ]


def _busiest_second(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


def test_bridge_partitioned_from_the_api_server(tmp_path: Path, network: Network) -> None:
    link = network.device("bridge")
    broker = broker_at(network.broker_host, "mosquitto", tmp_path, TEST_SECRET, DEVICES)
    fab = Fabric(tmp_path, broker, plane="kube", api_host=link.gateway)
    try:
        bridge = fab.start_bridge(
            "bridge-net",
            prefix=link.exec_argv([]),
            http_host=link.address,
            write_qps=QPS,
            write_burst=BURST,
        )
        for device in DEVICES:
            fab.create(f"job-{device}", device, ["sleep", "600"])
            fab.start_agent(device)
        fab.wait_settled(*(f"job-{d}" for d in DEVICES), timeout=60.0)
        assert bridge.readyz().get("ready") is True

        mark = time.monotonic()
        link.partition_from(link.gateway)
        cut = time.monotonic()
        for device in DEVICES:
            fab.kill_agent(device)  # the broker fires every will: one real transition each
        wait_for(lambda: time.monotonic() - cut >= CUT, CUT + 1, 0.1, what="the cut")
        assert _status_writes(fab, mark) == [], "a write got through the cut"
        link.heal()
        healed = time.monotonic()

        def lost(name: str) -> bool:
            cond = condition(fab.get(name), "AgentConnected")
            return cond.get("status") == "False" and cond.get("reason") == "ConnectionLost"

        wait_for(lambda: all(lost(f"job-{d}") for d in DEVICES), 60, 0.1, what="every loss written")
        converged = time.monotonic() - healed
        writes = _status_writes(fab, mark)
        per_resource = Counter(name for _, name in writes)
        assert per_resource == Counter({f"job-{d}": 1 for d in DEVICES}), per_resource
        busiest = _busiest_second([t for t, _ in writes])
        assert busiest <= QPS + BURST, f"{busiest} status writes in one second"
        print(
            f"\nbridge cut off from the API for {CUT:.0f}s: {len(writes)} status writes after the "
            f"heal, converged {converged:.1f}s after it, busiest second {busiest} "
            f"(budget {QPS}/s + burst {BURST})"
        )
    finally:
        fab.close()
