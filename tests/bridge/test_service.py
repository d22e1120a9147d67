"""Tier 2: the bridge against a real mosquitto and simulated devices, counting every write.

Each story arranges devices (real MQTT connections with their derived passwords and wills) and
DeviceProcess resources in the in-memory control plane, runs the bridge, acts as the fleet would,
and asserts on what an operator would see: conditions, write counts, Events, desired documents.
"Nothing was written" is never shown by sleeping: the test waits for a positive marker that
happens after (the bridge has counted the messages and its queue is empty, or a later write of
another resource arrived), then counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from devicefabric.config.resource import Reason
from tests.bridge.fleet import Fleet
from tests.bridge.memory_cp import MemoryControlPlane, resource
from tests.bridge.scene import running, settle, settled_status, until
from tests.support.brokers import BrokerProcess

TWENTY = tuple(f"dev-{i:02d}" for i in range(20))


def play(story: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(story())


def connected(cp: MemoryControlPlane, keys: list[str], reason: str = "Connected") -> bool:
    return all(cp.reason(k) == reason for k in keys)


@pytest.mark.fabric_devices(*TWENTY)
def test_heartbeats_write_nothing(mosquitto: BrokerProcess, secret: bytes) -> None:
    """20 devices beating every second for 4 s (past the 3 s stale window): 0 writes, 0 Events."""
    broker = mosquitto
    cp = MemoryControlPlane()
    keys = []
    for name in TWENTY:
        res = resource(f"p-{name}", name)
        cp.apply(res)
        keys.append(res.key)

    async def story() -> None:
        fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=1)
        await fleet.connect(TWENTY)
        try:
            async with fleet.beating(), running(broker, cp) as bridge:
                await until(lambda: connected(cp, keys), what="all Connected")
                await settle(bridge, cp)
                cp.clear_counts()
                seen = bridge.ingest.stats.messages["heartbeat"]
                started = time.monotonic()
                await until(
                    lambda: bridge.ingest.stats.messages["heartbeat"] >= seen + 20 * 4,
                    timeout=10,
                    what="4 heartbeats from each device",
                )
                await settle(bridge, cp)
                elapsed = time.monotonic() - started
                assert elapsed >= 3.0  # longer than the stale window (3 x 1 s)
                assert (len(cp.writes), len(cp.events)) == (0, 0)
                assert bridge.tracker.counts()["connected"] == 20
        finally:
            await fleet.close()

    play(story)


@pytest.mark.fabric_devices("dev-a", "dev-b", "dev-c")
def test_will_sweep_reconnect_and_late_will(mosquitto: BrokerProcess, secret: bytes) -> None:
    """kill -9: one write + one Warning per resource within 1 s; the sweep adds nothing; a
    reconnect writes once per resource; a late will of the old session writes nothing."""
    names = ("dev-a", "dev-b", "dev-c")
    broker = mosquitto
    cp = MemoryControlPlane()
    a_keys = []
    for i in range(2):
        res = resource(f"a{i}", "dev-a")
        cp.apply(res)
        a_keys.append(res.key)
    cp.apply(resource("b0", "dev-b"))
    cp.apply(resource("c0", "dev-c"))

    async def story() -> None:
        fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=1)
        await fleet.connect(names)
        try:
            async with fleet.beating(), running(broker, cp) as bridge:
                await until(lambda: connected(cp, [*a_keys, "default/b0", "default/c0"]))
                await settle(bridge, cp)
                cp.clear_counts()
                old_session = fleet["dev-a"].session

                # kill -9 of dev-a's agent, and dev-b goes silent at the same moment
                fleet.silent.add("dev-b")
                killed = time.monotonic()
                fleet["dev-a"].drop()
                await until(lambda: connected(cp, a_keys, "ConnectionLost"), timeout=2)
                assert time.monotonic() - killed < 1.0
                assert sorted(w.key for w in cp.writes) == a_keys
                assert [
                    (e.key, e.type, e.reason) for e in sorted(cp.events, key=lambda e: e.key)
                ] == [(k, "Warning", "ConnectionLost") for k in a_keys]

                # dev-b's HeartbeatTimeout proves the sweep ran past dev-a's stale window
                await until(lambda: cp.reason("default/b0") == "HeartbeatTimeout", timeout=6)
                await settle(bridge, cp)
                assert len([w for w in cp.writes if w.key in a_keys]) == 2
                assert cp.reason(a_keys[0]) == "ConnectionLost"

                # restart the agent: exactly one write per resource back to Connected
                cp.clear_counts()
                device = await fleet.reconnect("dev-a")
                await until(lambda: connected(cp, a_keys), timeout=3)
                await settle(bridge, cp)
                assert sorted(w.key for w in cp.writes) == a_keys
                assert {(e.type, e.reason) for e in cp.events} == {("Normal", "Connected")}
                assert len(cp.events) == 2

                # a late will of the old session after the reconnect: no write at all
                cp.clear_counts()
                statuses = bridge.ingest.stats.messages["status"]
                late = f'{{"state":"offline","session":"{old_session}","reason":"lost"}}'
                await device.publish(fleet.topics.status("dev-a"), late.encode(), retain=True)
                await until(lambda: bridge.ingest.stats.messages["status"] > statuses)
                await settle(bridge, cp)
                assert (cp.writes, cp.events) == ([], [])
                dev_a = bridge.tracker.get("dev-a")
                assert dev_a is not None
                assert (dev_a.reason, dev_a.session) == (Reason.CONNECTED, device.session)
        finally:
            await fleet.close()

    play(story)


MANY = tuple(f"m-{i:03d}" for i in range(200))


@pytest.mark.fabric_devices(*MANY)
def test_mass_disconnect_is_rate_limited(mosquitto: BrokerProcess, secret: bytes) -> None:
    """200 devices lost at once, write QPS 100 burst 10: 400 writes (200 patches + 200 Events)
    spread at <= 100/s after the burst, and every resource ends ConnectionLost."""
    qps, burst = 100.0, 10
    broker = mosquitto
    cp = MemoryControlPlane()
    keys = []
    for name in MANY:
        res = resource(f"p-{name}", name)
        cp.apply(replace(res, status=settled_status(res, Reason.CONNECTED)))
        keys.append(res.key)

    async def story() -> None:
        fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=30)
        await fleet.connect(MANY)
        try:
            async with running(broker, cp, write_qps=qps, write_burst=burst) as bridge:
                # confirm every device (a retained birth alone is not proof of life)
                fleet.beat()
                await until(lambda: bridge.tracker.counts()["connected"] == 200, timeout=10)
                await settle(bridge, cp)
                assert cp.writes == []  # statuses were already right: nothing to write

                started = time.monotonic()
                for device in fleet.devices.values():
                    device.drop()
                await until(lambda: connected(cp, keys, "ConnectionLost"), timeout=15)
                await settle(bridge, cp)
        finally:
            await fleet.close()
        calls = sorted([w.at for w in cp.writes] + [e.at for e in cp.events])
        assert (len(cp.writes), len(cp.events)) == (200, 200)
        span = calls[-1] - started
        assert span >= (400 - burst) / qps * 0.9  # the limiter did spread them
        for t in calls:  # any 1 s window holds at most qps (+ the burst)
            in_window = sum(1 for u in calls if t <= u < t + 1.0)
            assert in_window <= qps + burst + 1

    play(story)
