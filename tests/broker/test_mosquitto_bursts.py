"""A fleet-wide burst reaches the bridge whole through the generated mosquitto config.

mosquitto queues at most `max_queued_messages` messages per client beyond its in-flight window
(default 1,000) and drops the rest. The bridge receives every device's will on one connection
when a site loses power, and every retained document when it restarts: past ~1,000 devices the
default loses most of them. The generator sizes the bound for the fleet (`queue_bound`); this
test drops 1,500 devices at once and counts what a live observer and an offline persistent
`bridge` session receive.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from devicefabric.broker.mosquitto import QUEUE_FLOOR, queue_bound
from devicefabric.config.topics import DeviceTopic, Topics
from tests.support.brokers import BrokerProcess, prepare_mosquitto, running
from tests.support.devices import Fleet
from tests.support.mqtt import connect

pytestmark = pytest.mark.mosquitto

FLEET = 1500  # more than mosquitto's default bound of 1,000
SECRET = b"burst-secret-burst-secret-burst!"
T = Topics()


def test_the_queue_bound_grows_with_the_fleet() -> None:
    assert queue_bound(0) == QUEUE_FLOOR
    assert queue_bound(5000) >= 3 * 5000 + QUEUE_FLOOR  # a whole retained replay of 5,000
    assert queue_bound(10_000) > queue_bound(5000)


def test_the_generated_conf_carries_the_bound(tmp_path: Path) -> None:
    names = [f"g-{i}" for i in range(10)]
    with running(prepare_mosquitto(tmp_path, SECRET, names)) as broker:
        conf = next(broker.workdir.rglob("mosquitto.conf")).read_text(encoding="utf-8")
    assert f"max_queued_messages {queue_bound(10)}" in conf.splitlines()


def _drop_all(broker: BrokerProcess, names: list[str]) -> None:
    async def run() -> None:
        fleet = Fleet(broker.host, broker.port, SECRET)
        try:
            await fleet.connect(names, birth=False)
        finally:
            await fleet.close()  # sockets closed without DISCONNECT: every will fires

    asyncio.run(run())


def test_a_mass_disconnect_delivers_every_will(tmp_path: Path) -> None:
    names = [f"b-{i:04d}" for i in range(FLEET)]
    status = T.all_devices(DeviceTopic.STATUS)
    with running(prepare_mosquitto(tmp_path, SECRET, names)) as broker:
        # The bridge's persistent session goes offline: its queue must hold the whole burst.
        bridge = connect(broker, "bridge", client_id="bridge_burst", clean=False)
        bridge.subscribe(status, qos=1)
        bridge.close()
        observer = connect(broker, "observer", client_id="observer_burst")
        observer.subscribe(status, qos=1)
        try:
            _drop_all(broker, names)
            observer.inbox.wait_count(FLEET, status, timeout=30)
            bridge = connect(broker, "bridge", client_id="bridge_burst", clean=False)
            try:
                bridge.inbox.wait_count(FLEET, status, timeout=30)
                wills = {json.loads(m.payload)["reason"] for m in bridge.inbox.messages(status)}
                assert wills == {"lost"}
                assert len({m.topic for m in bridge.inbox.messages(status)}) == FLEET
            finally:
                bridge.close()
        finally:
            observer.close()
