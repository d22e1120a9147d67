"""The simulated devices' own contract: what the bridge suites rely on of a `Fleet`.

A real mosquitto and a watcher on every device's status and heartbeat: births carry the device's
session, `drop()` makes the broker publish the will, `shutdown()` leaves the clean retained
offline and no will, `reconnect` is a new session, `desired=True` delivers the retained desired
document into `messages`, and `beat()` reaches the broker.
"""

from __future__ import annotations

import asyncio

import pytest

from devicefabric.config.topics import DeviceTopic, Topics
from tests.support.brokers import BrokerProcess
from tests.support.devices import Fleet
from tests.support.inbox import Message
from tests.support.mqtt import Client, connect
from tests.support.waiting import async_wait_for, run_bounded

T = Topics()


def _status(
    watcher: Client, device: str, state: str, *, reason: str = "", session: str = ""
) -> Message:
    """The first status of `device` in `state` (with `reason` and `session` when given)."""

    def wanted(message: Message) -> bool:
        doc = message.json()
        want = {"state": state, "reason": reason, "session": session}
        return all(doc.get(key) == value for key, value in want.items() if value)

    return watcher.inbox.wait_for(T.status(device), wanted)


@pytest.mark.mosquitto
@pytest.mark.fabric_devices("sd-a", "sd-b", "sd-c")
def test_births_wills_clean_exits_and_new_sessions(mosquitto: BrokerProcess) -> None:
    watcher = connect(mosquitto, "bridge")
    watcher.subscribe(T.all_devices(DeviceTopic.STATUS))
    watcher.subscribe(T.all_devices(DeviceTopic.HEARTBEAT), qos=0)

    async def scenario() -> None:
        fleet = Fleet(mosquitto.host, mosquitto.port, mosquitto.secret)
        try:
            await fleet.connect(["sd-a", "sd-b", "sd-c"])
            births = {
                d: await asyncio.to_thread(_status, watcher, d, "online") for d in fleet.devices
            }
            assert {d: m.json()["session"] for d, m in births.items()} == {
                d: fleet[d].session for d in fleet.devices
            }
            assert fleet.beat() == 3
            await asyncio.to_thread(
                watcher.inbox.wait_count, 3, T.all_devices(DeviceTopic.HEARTBEAT)
            )

            old = fleet["sd-a"].session
            fleet["sd-a"].drop()
            assert not fleet["sd-a"].connected
            will = await asyncio.to_thread(_status, watcher, "sd-a", "offline", reason="lost")
            assert will.json()["session"] == old
            device = await fleet.reconnect("sd-a")
            assert device.session != old
            await asyncio.to_thread(_status, watcher, "sd-a", "online", session=device.session)

            await fleet["sd-b"].shutdown()
            assert not fleet["sd-b"].connected
            last = await asyncio.to_thread(_status, watcher, "sd-b", "offline")
            assert last.json()["reason"] == "shutdown"
            assert fleet.beat() == 2  # sd-a (again) and sd-c
        finally:
            await fleet.close()
        # The clean exit left no will behind: the last status of sd-b is still the shutdown.
        await asyncio.to_thread(_status, watcher, "sd-c", "offline", reason="lost")
        assert watcher.inbox.messages(T.status("sd-b"))[-1].json()["reason"] == "shutdown"

    try:
        run_bounded(scenario)
    finally:
        watcher.close()


@pytest.mark.mosquitto
@pytest.mark.fabric_devices("sd-d")
def test_desired_subscriptions_deliver_the_retained_document(mosquitto: BrokerProcess) -> None:
    bridge = connect(mosquitto, "bridge")
    try:
        bridge.publish(T.desired("sd-d"), b'{"revision":"r1"}', retain=True)
    finally:
        bridge.close()

    async def scenario() -> None:
        fleet = Fleet(mosquitto.host, mosquitto.port, mosquitto.secret)
        try:
            await fleet.connect(["sd-d"], desired=True)
            device = fleet["sd-d"]
            await async_wait_for(lambda: device.messages, what="the desired document")
            assert device.messages == [(T.desired("sd-d"), b'{"revision":"r1"}', True)]
        finally:
            await fleet.close()

    run_bounded(scenario)
