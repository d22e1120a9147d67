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
import json
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from devicefabric.bridge.service import Bridge
from devicefabric.config.resource import Reason
from devicefabric.config.settings import HostPort
from tests.support.bridges import http_get, running, settle, settled_status, until
from tests.support.brokers import BrokerProcess
from tests.support.memoryplane import MemoryControlPlane, resource
from tests.support.simfleet import connected_fleet

TWENTY = tuple(f"dev-{i:02d}" for i in range(20))


def play(story: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(story())


def sample(bridge: Bridge, name: str, **labels: str) -> float:
    value = bridge.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


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
        async with (
            connected_fleet(broker, secret, TWENTY) as fleet,
            fleet.beating(),
            running(broker, cp) as bridge,
        ):
            await until(lambda: connected(cp, keys), what="all Connected")
            await settle(bridge, cp)
            cp.clear_counts()
            seen = bridge.snapshot().messages["heartbeat"]
            started = time.monotonic()
            await until(
                lambda: bridge.snapshot().messages["heartbeat"] >= seen + 20 * 4,
                timeout=10,
                what="4 heartbeats from each device",
            )
            await settle(bridge, cp)
            elapsed = time.monotonic() - started
            assert elapsed >= 3.0  # longer than the stale window (3 x 1 s)
            beats = bridge.snapshot().messages["heartbeat"] - seen
            print(f"\n[figure] {beats} heartbeats from 20 devices over {elapsed:.1f} s: "
                  f"{len(cp.writes)} status writes, {len(cp.events)} events")  # fmt: skip
            assert (len(cp.writes), len(cp.events)) == (0, 0)
            assert bridge.snapshot().device_states["connected"] == 20

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
        async with (
            connected_fleet(broker, secret, names) as fleet,
            fleet.beating(),
            running(broker, cp) as bridge,
        ):
            await until(lambda: connected(cp, [*a_keys, "default/b0", "default/c0"]))
            await settle(bridge, cp)
            cp.clear_counts()
            old_session = fleet["dev-a"].session

            # kill -9 of dev-a's agent, and dev-b goes silent at the same moment
            fleet.silent.add("dev-b")
            killed = time.monotonic()
            fleet["dev-a"].drop()
            await until(lambda: connected(cp, a_keys, "ConnectionLost"), timeout=2)
            latency = max(w.at for w in cp.writes) - killed
            print(f"\n[figure] kill -9 -> ConnectionLost written for 2 resources in "
                  f"{latency * 1000:.0f} ms; {len(cp.writes)} writes, {len(cp.events)} events")  # fmt: skip
            assert latency < 1.0
            assert sorted(w.key for w in cp.writes) == a_keys
            assert [(e.key, e.type, e.reason) for e in sorted(cp.events, key=lambda e: e.key)] == [
                (k, "Warning", "ConnectionLost") for k in a_keys
            ]

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
            statuses = bridge.snapshot().messages["status"]
            late = f'{{"state":"offline","session":"{old_session}","reason":"lost"}}'
            await device.publish(fleet.topics.status("dev-a"), late.encode(), retain=True)
            await until(lambda: bridge.snapshot().messages["status"] > statuses)
            await settle(bridge, cp)
            assert (cp.writes, cp.events) == ([], [])
            dev_a = bridge.snapshot("dev-a").devices.get("dev-a")
            assert dev_a is not None
            assert (dev_a.reason, dev_a.session) == (Reason.CONNECTED, device.session)

    play(story)


MANY = tuple(f"m-{i:03d}" for i in range(200))


@pytest.mark.fabric_devices("dev-a")
def test_a_failed_event_is_retried_until_recorded_once(
    mosquitto: BrokerProcess, secret: bytes
) -> None:
    """An Event POST failing with a 5xx is retried through the queue: recorded exactly once, and
    the status (already written) is not written again."""
    cp = MemoryControlPlane()
    cp.apply(resource("w0", "dev-a"))
    key = "default/w0"

    async def story() -> None:
        async with (
            connected_fleet(mosquitto, secret, ["dev-a"]) as fleet,
            fleet.beating(),
            running(mosquitto, cp) as bridge,
        ):
            await until(lambda: connected(cp, [key]))
            await settle(bridge, cp)
            cp.clear_counts()
            cp.event_failures = 2
            fleet["dev-a"].drop()
            await until(lambda: len(cp.events) == 1, timeout=5)
            await settle(bridge, cp)
            assert cp.event_failures == 0  # both injected failures were hit
            assert [(e.key, e.type, e.reason) for e in cp.events] == [
                (key, "Warning", "ConnectionLost")
            ]
            assert [w.key for w in cp.writes] == [key]

    play(story)


def _busiest(times: list[float]) -> int:
    """The most calls in any 1 s window."""
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


@pytest.mark.fabric_devices(*MANY)
def test_mass_disconnect_is_rate_limited(mosquitto: BrokerProcess, secret: bytes) -> None:
    """200 devices lost at once, status QPS 100 burst 10, Events 50/s burst 10: 200 patches
    spread at <= 100/s after the burst and never waiting for an Event, 200 Events at <= 50/s on
    their own budget, and every resource ends ConnectionLost."""
    qps, burst, event_qps, event_burst = 100.0, 10, 50.0, 10
    broker = mosquitto
    cp = MemoryControlPlane()
    keys = []
    for name in MANY:
        res = resource(f"p-{name}", name)
        cp.apply(replace(res, status=settled_status(res, Reason.CONNECTED)))
        keys.append(res.key)

    async def story() -> None:
        async with (
            connected_fleet(broker, secret, MANY, heartbeat_s=30) as fleet,
            running(
                broker,
                cp,
                write_qps=qps,
                write_burst=burst,
                event_qps=event_qps,
                event_burst=event_burst,
            ) as bridge,
        ):
            # confirm every device (a retained birth alone is not proof of life)
            fleet.beat()
            await until(lambda: bridge.snapshot().device_states["connected"] == 200, timeout=10)
            await settle(bridge, cp)
            assert cp.writes == []  # statuses were already right: nothing to write

            started = time.monotonic()
            for device in fleet.devices.values():
                device.drop()
            await until(lambda: connected(cp, keys, "ConnectionLost"), timeout=15)
            await until(lambda: len(cp.events) == 200, timeout=15)
            await settle(bridge, cp)
        patches = sorted(w.at for w in cp.writes)
        events = sorted(e.at for e in cp.events)
        assert (len(patches), len(events)) == (200, 200)
        status_done, events_done = patches[-1] - started, events[-1] - started
        print(f"\n[figure] 200 devices lost at once: 200 patches at qps {qps:.0f} burst {burst} "
              f"done after {status_done:.2f} s (busiest 1 s: {_busiest(patches)}); 200 Events "
              f"at {event_qps:.0f}/s burst {event_burst} done after {events_done:.2f} s "
              f"(busiest 1 s: {_busiest(events)})")  # fmt: skip
        assert status_done >= (200 - burst) / qps * 0.9  # the limiter did spread them
        assert events_done >= (200 - event_burst) / event_qps * 0.9
        assert _busiest(patches) <= qps + burst + 1
        assert _busiest(events) <= event_qps + event_burst + 1
        # Status never waited for Events: on one shared budget both would end together.
        assert status_done + 1.0 < events_done

    play(story)


def desired_publishes(device: Any) -> list[tuple[str, bytes, bool]]:
    """What a device received on its desired topic (retained replays included)."""
    return [m for m in device.messages if m[0].endswith("/desired")]


FIVE = ("dev-a", "dev-b", "dev-c", "dev-d", "tor9-99")


@pytest.mark.fabric_devices(*FIVE)
def test_restart_with_everything_healthy_writes_and_publishes_nothing(
    mosquitto: BrokerProcess, secret: bytes
) -> None:
    """A second bridge over the same state writes 0 statuses, 0 Events, 0 desired documents."""
    broker = mosquitto
    cp = MemoryControlPlane()
    keys = []
    for name in FIVE:
        for i in range(2):
            res = resource(f"{name}-{i}", name)
            cp.apply(res)
            keys.append(res.key)

    async def story() -> None:
        async with connected_fleet(broker, secret, FIVE, desired=True) as fleet:
            for device in fleet.devices.values():
                running_ = {"generation": 1, "phase": "Running", "pid": 7, "restarts": 0}
                await device.report({f"default/{device.name}-{i}": running_ for i in range(2)})
            async with fleet.beating():
                async with running(broker, cp) as first:
                    await until(lambda: all(cp.reason(k, "Synced") == "Applied" for k in keys))
                    await until(lambda: connected(cp, keys))
                    await until(lambda: first.snapshot().desired_read_back == len(FIVE))
                    await settle(first, cp)
                    assert sample(first, "devicefabric_desired_published_total") == len(FIVE)
                cp.clear_counts()
                received = {d.name: len(desired_publishes(d)) for d in fleet.devices.values()}

                async with running(broker, cp) as second:
                    await until(lambda: second.snapshot().device_states["connected"] == len(FIVE))
                    await settle(second, cp)
                    assert (cp.writes, cp.events) == ([], [])
                    assert sample(second, "devicefabric_desired_published_total") == 0

                    # positive marker: a real change is published and written at once
                    changed = replace(
                        cp.stored("default/dev-a-0"),
                        generation=2,
                        spec={"deviceName": "dev-a", "command": ["sleep", "9"]},
                    )
                    cp.apply(changed)
                    await until(lambda: len(desired_publishes(fleet["dev-a"])) > received["dev-a"])
                    await until(lambda: cp.reason("default/dev-a-0", "Synced") == "Pending")
                    await settle(second, cp)
                    assert sample(second, "devicefabric_desired_published_total") == 1
                    assert [w.key for w in cp.writes] == ["default/dev-a-0"]
                    for device in fleet.devices.values():
                        extra = 1 if device.name == "dev-a" else 0
                        assert len(desired_publishes(device)) == received[device.name] + extra

    play(story)


@pytest.mark.fabric_devices("tor9-99")
def test_desired_follows_resources_and_invalid_specs_stay_home(
    mosquitto: BrokerProcess, secret: bytes
) -> None:
    broker = mosquitto
    cp = MemoryControlPlane()
    web = resource("web", "tor9-99", command=["sleep", "100"])
    cp.apply(web)

    def docs(device: Any) -> list[Any]:
        return [json.loads(p) for _, p, _ in desired_publishes(device) if p]

    async def story() -> None:
        async with connected_fleet(broker, secret, ["tor9-99"], desired=True) as fleet:
            device = fleet["tor9-99"]
            async with fleet.beating(), running(broker, cp) as bridge:
                await until(lambda: len(docs(device)) == 1)
                (doc,) = docs(device)
                assert [p["name"] for p in doc["processes"]] == ["web"]
                assert doc["processes"][0]["spec"]["restartPolicy"] == "Always"

                bad = resource("bad", "tor9-99", spec={"deviceName": "tor9-99", "command": []})
                cp.apply(bad)
                await until(lambda: cp.reason(bad.key, "Synced") == "InvalidSpec")
                await settle(bridge, cp)
                assert len(docs(device)) == 1  # the invalid one is not sent; nothing changed

                cp.delete(web.key)
                await until(lambda: len(docs(device)) == 2)
                assert docs(device)[-1]["processes"] == []  # stop everything

    play(story)


@pytest.mark.fabric_devices("dev-a")
def test_invalid_messages_are_dropped_counted_and_served(
    mosquitto: BrokerProcess, secret: bytes
) -> None:
    """Garbage from a device is dropped and counted; /healthz /readyz /metrics /devices serve.
    (Oversized payloads are refused by mosquitto itself; ingest's own limit is a tier-1 test.)"""
    broker = mosquitto
    cp = MemoryControlPlane()
    cp.apply(resource("web", "dev-a"))

    async def story() -> None:
        async with connected_fleet(broker, secret, ["dev-a"]) as fleet:
            device = fleet["dev-a"]
            async with running(broker, cp, http=HostPort("127.0.0.1", 0)) as bridge:
                port = bridge.http_port
                assert port is not None
                topics = fleet.topics
                await device.publish(topics.heartbeat("dev-a"), b"{not json")
                await device.publish(topics.report("dev-a"), b'{"session": 1}')
                invalid = "devicefabric_invalid_messages_total"
                await until(lambda: sample(bridge, invalid, reason="invalid_json") == 1)
                await until(lambda: sample(bridge, invalid, reason="schema") == 1)
                device.heartbeat()
                await until(lambda: cp.reason("default/web") == "Connected")

                assert await http_get(port, "/healthz") == (200, b'{"status":"ok"}\n')
                code, body = await http_get(port, "/readyz")
                ready = json.loads(body)
                assert (code, ready["ready"], ready["role"], ready["mqtt"]) == (
                    200,
                    True,
                    "leader",
                    "primed",
                )
                code, body = await http_get(port, "/metrics")
                text = body.decode()
                assert code == 200
                assert 'devicefabric_invalid_messages_total{reason="invalid_json"} 1.0' in text
                assert 'devicefabric_devices{state="connected"} 1.0' in text
                assert 'devicefabric_controlplane_writes_total{kind="status"}' in text
                assert "devicefabric_queue_depth" in text
                code, body = await http_get(port, "/devices")
                (entry,) = json.loads(body)
                assert (entry["device"], entry["state"], entry["session"]) == (
                    "dev-a",
                    "connected",
                    device.session,
                )
                assert entry["resources"] == ["default/web"]
                assert 0 <= entry["lastSeenAgeSeconds"] < 5
                assert (await http_get(port, "/nope"))[0] == 404

    play(story)


@pytest.mark.fabric_devices("dev-a", "dev-b")
def test_bridge_reconnect_writes_only_what_happened(
    mosquitto: BrokerProcess, secret: bytes
) -> None:
    """The bridge loses its broker connection; meanwhile dev-b dies. After the reconnect and the
    retained replay: dev-b's ConnectionLost is written, dev-a (healthy) gets nothing."""
    broker = mosquitto
    cp = MemoryControlPlane()
    cp.apply(resource("a", "dev-a"))
    cp.apply(resource("b", "dev-b"))

    async def story() -> None:
        async with (
            connected_fleet(broker, secret, ["dev-a", "dev-b"]) as fleet,
            fleet.beating(),
            running(broker, cp) as bridge,
        ):
            await until(lambda: connected(cp, ["default/a", "default/b"]))
            await settle(bridge, cp)
            cp.clear_counts()
            first_session = bridge.snapshot().session
            assert bridge._link.connection is not None
            sock = bridge._link.connection.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # the network drops the bridge
            await until(lambda: not bridge.snapshot().mqtt_connected)
            fleet["dev-b"].drop()  # dies while the bridge is away
            await until(
                lambda: (
                    bridge.snapshot().mqtt_primed and bridge.snapshot().session != first_session
                ),
                timeout=10,
            )
            await until(lambda: cp.reason("default/b") == "ConnectionLost")
            await settle(bridge, cp)
            assert [w.key for w in cp.writes] == ["default/b"]
            assert cp.reason("default/a") == "Connected"

    play(story)
