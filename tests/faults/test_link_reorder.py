"""Scenario 6 of the real-network suite: reports duplicated and reordered on the agent's link.

The agent reaches the broker through `tests.faults.mqttproxy.MqttProxy`, which sends every
PUBLISH twice (the copy with DUP) and swaps consecutive ones. Why not `tc netem`: this kernel
has no `sch_netem`, and IP-level reordering or duplication never reaches MQTT anyway (TCP delivers
a connection's bytes once and in order); what does reach it is a PUBLISH delivered again (a QoS 1
resend with DUP) and reports in another order (a resend across a reconnect), which the proxy makes
for real. Three spec changes, each a burst of reports (Pending, then Running at the new
generation) through the proxy. What must hold: the bridge applies no report out of
order (the stored `observedGeneration` never goes back, sampled throughout) and refuses the late
and repeated ones by `seq` (its `sequence` counter of invalid messages grows); no write repeats
one already made (at most the apply plus three status writes per change); every change ends
Running at its generation, on its device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.conftest import TEST_SECRET
from tests.faults.mqttproxy import MqttProxy
from tests.support.fabric import Fabric
from tests.support.resources import key, manifest

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

CHANGES: Final = 3
MAX_WRITES_PER_CHANGE: Final = 4  # the apply, then at most three status writes to Running


@pytest.fixture
def fab(tmp_path: Path) -> Iterator[Fabric]:
    with Fabric.mosquitto(tmp_path, TEST_SECRET, ("ro", "marker"), plane="local") as fabric:
        yield fabric


def test_duplicated_and_reordered_reports_are_applied_in_order_once(fab: Fabric) -> None:
    proxy = MqttProxy(fab.broker.host, fab.broker.port)
    try:
        fab.apply(manifest("job", "ro", ["sleep", "600"]))
        bridge = fab.start_bridge()
        fab.start_agent("ro", broker_urls=proxy.url)
        fab.wait_settled("job", timeout=30)
        refused_before = bridge.metrics().value(
            "devicefabric_invalid_messages_total", reason="sequence"
        )
        seen: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with_gen = fab.status("job").get("observedGeneration")
                if isinstance(with_gen, int) and (not seen or seen[-1] != with_gen):
                    seen.append(with_gen)
                time.sleep(0.01)  # a sampling period, not a wait for a condition

        sampler = threading.Thread(target=sample, name="sampler", daemon=True)
        mark = fab.ledger.mark()
        sampler.start()
        try:
            for change in range(1, CHANGES + 1):
                generation = fab.generation("job") + 1
                fab.apply(manifest("job", "ro", ["sleep", str(600 + change)]))

                def arrived(g: int = generation) -> bool:
                    return fab.settled("job") and fab.status("job").get("observedGeneration") == g

                fab.wait(arrived, 30, f"change {change} Running at generation {generation}")
        finally:
            stop.set()
            sampler.join(5)
        writes = fab.ledger.writes(mark)
        refused = (
            bridge.metrics().value("devicefabric_invalid_messages_total", reason="sequence")
            - refused_before
        )
        print(
            f"\nproxy duplicated {proxy.duplicated} and swapped {proxy.swapped} PUBLISH packets; "
            f"the bridge refused {refused:.0f} by seq; observedGeneration seen {seen}; "
            f"writes {writes[key('job')]}"
        )
        assert proxy.duplicated > 0
        assert proxy.swapped > 0
        assert seen == sorted(seen), f"a report was applied out of order: {seen}"
        assert refused > 0, "no late or repeated report reached the bridge"
        assert writes[key("job")] <= CHANGES * MAX_WRITES_PER_CHANGE, writes
    finally:
        proxy.close()
