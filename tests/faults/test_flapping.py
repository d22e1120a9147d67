"""Fault scenario 3: a flapping device, takeovers included, cannot flood the control plane.

Two devices flap against a real mosquitto while `devicefabric bridge run` (local control plane)
watches: each flap is a new MQTT connection as the device, with the agent's will, a birth under a
new session, and then either a drop without DISCONNECT (the broker fires the will) or, every
third flap, a takeover (the next connection with the same client id kicks this one, whose late
will must not count against the newer session). The test plays the devices itself, at the issue's
rate of 10 flaps per second: 40 flaps each by default, 100 with `FAULTS_LONG=1`.

What must hold: the final state is right (`flap-up` ends connected, `flap-down` ends dropped);
each resource is written at most `key burst + elapsed / min interval` times (the work queue's
per-key spacing: 3 at once, then one per second), however many transitions the bridge saw; and
an Event is only ever written with a status change, so there is no Event storm either.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Final

import pytest

from devicefabric.bridge.queueing import DEFAULT_KEY_BURST, DEFAULT_MIN_INTERVAL
from tests.faults.budget import LONG
from tests.support.brokers import BrokerProcess
from tests.support.fabric import Fabric
from tests.support.mqtt import Client, Will, connect
from tests.support.processes import (
    Doc,
)
from tests.support.resources import key, manifest, reason

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

FLAPS: Final = 100 if LONG else 40
RATE: Final = 10.0  # flaps per second, per device
TAKEOVER_EVERY: Final = 3
DEVICES: Final = ("flap-up", "flap-down")
RESOURCES: Final = {d: (f"{d}-a", f"{d}-b") for d in DEVICES}


class Flapper:
    """One device's connections, played by the test."""

    def __init__(self, broker: BrokerProcess, device: str) -> None:
        self.broker = broker
        self.device = device
        self.topic = broker.topics.status(device)
        self.current: Client | None = None
        self.flaps = 0
        self.takeovers = 0

    def flap(self, *, last: bool = False, stay: bool = False) -> None:
        """A new connection and birth; then a drop, or it stays to be taken over (or for good)."""
        self.flaps += 1
        session = f"{self.device}-{self.flaps}"
        will: Doc = {"state": "offline", "session": session, "reason": "lost"}
        previous = self.current
        client = connect(self.broker, self.device, will=Will(self.topic, json.dumps(will)))
        if previous is not None:  # the broker closed it when `client` connected
            self.takeovers += 1
            previous.close()
        birth: Doc = {"state": "online", "session": session, "heartbeat_s": 3600, "agent": "t"}
        assert client.publish(self.topic, birth, retain=True)
        if stay or (not last and self.flaps % TAKEOVER_EVERY == 0):
            self.current = client
        else:
            client.drop()
            client.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


@pytest.mark.timeout(180 if LONG else 90)
def test_a_flapping_device_is_written_at_the_per_key_rate_not_the_flap_rate(
    tmp_path: Path, secret: bytes
) -> None:
    with Fabric.mosquitto(tmp_path, secret, [*DEVICES, "marker"], plane="local") as fab:
        fab.apply(*(manifest(n, d, ["sleep", "600"]) for d in DEVICES for n in RESOURCES[d]))
        marker = fab.marker()
        bridge = fab.start_bridge()
        fab.wait(
            lambda: all(
                reason(fab.status(n), "Synced") == "Pending" for d in DEVICES for n in RESOURCES[d]
            ),
            10,
            "every resource pending",
        )
        bridge.wait_idle()
        transitions_before = bridge.metrics().value("devicefabric_transitions_total")
        mark = fab.ledger.mark()

        flappers = {d: Flapper(fab.broker, d) for d in DEVICES}
        started = time.monotonic()
        try:
            for i in range(FLAPS):
                last = i == FLAPS - 1
                flappers["flap-up"].flap(last=last, stay=last)
                flappers["flap-down"].flap(last=last)
                pause = started + (i + 1) / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # the flap rate itself, not a wait for the bridge
            flapped_for = time.monotonic() - started

            fab.wait(
                lambda: (
                    all(reason(fab.status(n)) == "Connected" for n in RESOURCES["flap-up"])
                    and all(
                        reason(fab.status(n)) == "ConnectionLost" for n in RESOURCES["flap-down"]
                    )
                ),
                15,
                "the final state",
            )
            marker.flip(bridge)  # nothing held back by the per-key interval is left to write
            elapsed = time.monotonic() - mark.at
            writes = fab.ledger.writes(mark)
            events = fab.ledger.event_reasons(mark)
            view = bridge.devices()
            transitions = bridge.metrics().value("devicefabric_transitions_total")
        finally:
            for flapper in flappers.values():
                flapper.close()

        seen = transitions - transitions_before - 1  # minus the marker's
        bound = DEFAULT_KEY_BURST + math.ceil(elapsed / DEFAULT_MIN_INTERVAL)
        per_resource = {n: writes[key(n)] for d in DEVICES for n in RESOURCES[d]}
        events_per = {
            n: sum(c for (name, _, _), c in events.items() if name == n) for n in per_resource
        }
        takeovers = sum(f.takeovers for f in flappers.values())
        print(
            f"\n[scenario 3] {2 * FLAPS} flaps ({takeovers} takeovers) in {flapped_for:.1f}s: the "
            f"bridge saw {seen:.0f} transitions; writes per resource {per_resource} "
            f"(bound {bound} over {elapsed:.1f}s); Events per resource {events_per}"
        )
        assert seen >= FLAPS  # the bridge did see the flapping...
        for name, count in per_resource.items():  # ...and wrote at the per-key rate
            assert 1 <= count <= bound, (name, count, bound)
            assert events_per[name] <= count
        assert sum(per_resource.values()) < seen / 2
        assert view["flap-up"]["state"] == "connected"
        assert view["flap-up"]["session"] == f"flap-up-{FLAPS}"
        assert view["flap-down"]["reason"] == "ConnectionLost"
        for name in RESOURCES["flap-up"]:
            assert reason(fab.status(name)) == "Connected"
        for name in RESOURCES["flap-down"]:
            assert reason(fab.status(name)) == "ConnectionLost"
