"""Hostile resources against the real bridge and a real broker (both kinds): none takes it down.

- 257 DeviceProcesses on one device (the wire allows 256 per document) used to raise inside the
  change callback and end the bridge (and `up`, and every restart). Now the 257th by
  namespace/name reads `Synced=False/InvalidSpec` and the 256 others are sent.
- A resource that makes its device's document larger than the payload limit used to be published
  anyway: the embedded broker dropped the bridge for the oversized packet and paho re-sent it on
  every reconnect (mosquitto: the bridge hung). Now nothing is published for that device (it
  keeps its last document), the resource reads `InvalidSpec` with the size, and the bridge keeps
  serving every other device.
- A device flooding completing reports (Running at the current generation, a new `restarts` each
  time; each is written at once, with no settle) is still held to the per-resource write credits:
  at most `key_write_burst` writes at once, then one per `min_write_interval`, and the last report
  is the one that ends up written.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from devicefabric.config.wire import MAX_PROCESSES
from tests.support.bridges import running, settle, until
from tests.support.brokers import BrokerProcess
from tests.support.devices import Fleet
from tests.support.memoryplane import MemoryControlPlane, resource


def desired_docs(fleet: Fleet, name: str) -> list[dict[str, object]]:
    return [json.loads(p) for t, p, _ in fleet[name].messages if t.endswith("/desired") and p]


def synced(cp: MemoryControlPlane, key: str) -> tuple[str | None, str]:
    cond = cp.condition(key, "Synced") or {}
    return cond.get("reason"), str(cond.get("message", ""))


@pytest.mark.fabric_devices("dev-a")
def test_257_processes_on_one_device_do_not_stop_the_bridge(
    any_broker: BrokerProcess, secret: bytes
) -> None:
    cp = MemoryControlPlane()
    for i in range(MAX_PROCESSES + 1):
        cp.apply(resource(f"p-{i:03d}", "dev-a"))
    extra = f"default/p-{MAX_PROCESSES:03d}"

    async def story() -> None:
        fleet = Fleet(any_broker.host, any_broker.port, secret)
        await fleet.connect(["dev-a"], desired=True)
        try:
            async with running(any_broker, cp) as bridge:
                await until(lambda: bool(desired_docs(fleet, "dev-a")), timeout=10)
                (doc,) = desired_docs(fleet, "dev-a")
                assert isinstance(doc["processes"], list)
                assert len(doc["processes"]) == MAX_PROCESSES
                await until(lambda: synced(cp, extra)[0] == "InvalidSpec", timeout=10)
                assert "at most 256 per device" in synced(cp, extra)[1]
                assert synced(cp, "default/p-000")[0] == "Pending"  # sent, not yet reported
                # one fewer: the 257th fits and is sent; its refusal goes away
                cp.delete("default/p-000")
                await until(lambda: synced(cp, extra)[0] == "Pending", timeout=10)
                await until(lambda: len(desired_docs(fleet, "dev-a")) == 2, timeout=10)
                processes = desired_docs(fleet, "dev-a")[1]["processes"]
                assert isinstance(processes, list)
                assert extra in {f"{p['namespace']}/{p['name']}" for p in processes}
                await settle(bridge, cp)
                assert bridge.snapshot().mqtt_connected
        finally:
            await fleet.close()

    asyncio.run(story())


def big(name: str, device: str, kib: int) -> dict[str, object]:
    """A valid spec of about `kib` KiB (one resource may take at most 32 KiB)."""
    return {"deviceName": device, "command": ["echo", *["x" * 1000] * kib]}


@pytest.mark.fabric_devices("dev-a", "dev-b")
def test_a_document_over_the_limit_is_refused_and_the_bridge_serves_on(
    any_broker: BrokerProcess, secret: bytes
) -> None:
    cp = MemoryControlPlane()
    cp.apply(resource("a", "dev-a", spec=big("a", "dev-a", 30)))  # ~30 KiB each: both fit
    cp.apply(resource("b", "dev-a", spec=big("b", "dev-a", 30)))

    async def story() -> None:
        fleet = Fleet(any_broker.host, any_broker.port, secret)
        await fleet.connect(["dev-a", "dev-b"], desired=True)
        try:
            async with running(any_broker, cp) as bridge:
                await until(lambda: len(desired_docs(fleet, "dev-a")) == 1, timeout=10)
                cp.apply(resource("c", "dev-a", spec=big("c", "dev-a", 10)))  # over 64 KiB now
                await until(lambda: synced(cp, "default/c")[0] == "InvalidSpec", timeout=10)
                message = synced(cp, "default/c")[1]
                assert "desired document for device dev-a would be" in message
                assert "limit 65536" in message
                assert synced(cp, "default/a")[0] == "Pending"  # not blamed for c
                assert synced(cp, "default/b")[0] == "Pending"
                # the bridge still serves: another device's change arrives at once
                cp.apply(resource("d", "dev-b"))
                await until(lambda: len(desired_docs(fleet, "dev-b")) == 1, timeout=10)
                assert len(desired_docs(fleet, "dev-a")) == 1  # dev-a kept its last document
                assert bridge.snapshot().mqtt_connected
                # the operator shrinks it: sent, the refusal goes away
                shrunk = replace(resource("b", "dev-a", spec=big("b", "dev-a", 2)), generation=2)
                cp.apply(shrunk)
                await until(lambda: len(desired_docs(fleet, "dev-a")) == 2, timeout=10)
                await until(lambda: synced(cp, "default/b")[0] == "Pending", timeout=10)
        finally:
            await fleet.close()

    asyncio.run(story())


@pytest.mark.fabric_devices("dev-a")
def test_a_flood_of_completing_reports_is_held_to_the_write_credits(
    mosquitto: BrokerProcess, secret: bytes
) -> None:
    cp = MemoryControlPlane()
    res = resource("web", "dev-a")
    cp.apply(res)
    interval, burst, flood = 0.5, 3, 60

    async def story() -> None:
        fleet = Fleet(mosquitto.host, mosquitto.port, secret, heartbeat_s=1)
        await fleet.connect(["dev-a"])
        device = fleet["dev-a"]
        running_ = {"generation": 1, "phase": "Running", "pid": 7, "restarts": 0}
        await device.report({res.key: running_})
        try:
            async with (
                fleet.beating(),
                running(
                    mosquitto, cp, min_write_interval=interval, key_write_burst=burst
                ) as bridge,
            ):
                await until(lambda: cp.reason(res.key, "Synced") == "Applied")
                await settle(bridge, cp)
                cp.clear_counts()
                started = time.monotonic()
                for restarts in range(1, flood + 1):
                    await device.report({res.key: {**running_, "restarts": restarts}})
                flooded = time.monotonic() - started
                await until(
                    lambda: cp.stored(res.key).status.get("restarts") == flood,
                    timeout=flooded + 3 * interval + 2,
                    what="the last report written",
                )
                await settle(bridge, cp)
                span = cp.writes[-1].at - started if cp.writes else 0.0
                assert 1 <= len(cp.writes) <= burst + span / interval + 1, (len(cp.writes), span)
                assert len(cp.writes) < flood / 4  # not one write per report
        finally:
            await fleet.close()

    asyncio.run(story())
