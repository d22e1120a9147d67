"""Tier 2: broker-link faults that must not take the bridge down, on real brokers.

(Resource limits, 257 processes and oversized documents, are in test_service_limits.py.)
- A message the broker refused (it disconnected us) is not re-sent on the next connection.
- A connection lost right after CONNACK, before the subscription, ends in a reconnect.
- `/healthz` fails once the MQTT link has been down past its bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from devicefabric.bridge.errors import MqttError
from devicefabric.bridge.mqtt import MqttLink
from devicefabric.bridge.service import Bridge, default_client_id
from devicefabric.config.names import is_device_name
from devicefabric.config.settings import HostPort, parse_broker_url
from devicefabric.config.topics import DEFAULT_ROOT, Topics
from devicefabric.config.wire import MAX_PAYLOAD_BYTES
from tests.support.bridges import link, settings, until
from tests.support.brokers import BrokerProcess
from tests.support.memoryplane import MemoryControlPlane
from tests.support.packets import ConnackThenClose
from tests.support.ports import free_port

T = Topics(DEFAULT_ROOT)


def play(story: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(story())


class _Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.primed = 0

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:  # noqa: ARG002
        self.messages.append((topic, payload))

    def on_connected(self) -> None:
        pass

    async def to_reread(self) -> list[list[str]]:
        return []

    def on_primed(self) -> None:
        self.primed += 1

    def on_lost(self) -> None:
        pass


def _link(url: str, password: str, handler: _Collect) -> MqttLink:
    return link(url, password, handler, reconnect_min=0.05, marker_timeout=1.0)


@pytest.mark.fabric_devices("tor9-99")
def test_a_refused_publish_is_not_resent_on_reconnect(any_broker: BrokerProcess) -> None:
    handler = _Collect()
    link = _link(any_broker.url, any_broker.password("bridge"), handler)

    async def story() -> None:
        task = asyncio.create_task(link.run())
        try:
            await until(lambda: handler.primed == 1, 10, "first connection primed")
            oversized = b"x" * (MAX_PAYLOAD_BYTES + 1000)
            assert link.publish(T.desired("tor9-99"), oversized, retain=False)
            await until(lambda: handler.primed == 2, 10, "reconnected and primed")
            marker = b'{"marker":1}'
            assert link.publish(T.desired("tor9-99"), marker, retain=False)
            await until(lambda: (T.desired("tor9-99"), marker) in handler.messages, 5, "echo")
            assert handler.primed == 2  # the refused message was not sent again
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    play(story)


def test_a_loss_right_after_connack_ends_in_a_reconnect() -> None:
    broker = ConnackThenClose()

    async def story() -> None:
        server = await asyncio.start_server(broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = _link(f"mqtt://127.0.0.1:{port}", "x", _Collect())
        task = asyncio.create_task(link.run())
        try:
            await until(lambda: broker.accepted >= 3, 10, "three connections")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()

    play(story)


def test_healthz_fails_once_mqtt_has_been_down_past_the_bound(embedded: BrokerProcess) -> None:
    from tests.support.bridges import http_get  # noqa: PLC0415 - one HTTP client for tier 2

    limit = 1.0
    closed = parse_broker_url(f"mqtt://127.0.0.1:{free_port()}")
    config = replace(
        settings(embedded), broker=closed, http=HostPort("127.0.0.1", 0), mqtt_down_limit=limit
    )

    async def story() -> None:
        async with Bridge(config, MemoryControlPlane()) as bridge:
            port = bridge.http_port
            assert port is not None
            start = time.monotonic()
            assert (await http_get(port, "/healthz"))[0] == 200  # down, but not for long yet
            while (await http_get(port, "/healthz"))[0] == 200:
                assert time.monotonic() - start < limit + 5, "/healthz never failed"
                await asyncio.sleep(0.1)
            assert time.monotonic() - start >= limit * 0.9
            status, body = await http_get(port, "/healthz")
            assert status == 503
            assert b"MQTT link has been down" in body

    play(story)


def test_the_default_client_id_is_unique_per_process_and_no_device_name() -> None:
    ids = {default_client_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert cid.startswith("bridge_")
        assert not is_device_name(cid)
        assert len(cid) <= 36


def test_subscriptions_refused_on_every_connection_end_the_link_with_a_clear_error(
    mosquitto: BrokerProcess,
) -> None:
    """A broker that keeps refusing (here: another topic root than its ACL) is fatal after 3 tries.

    A single refusal only reconnects: a NATS cluster refuses for a few seconds while JetStream
    elects new stream leaders after a node died. (mosquitto only: the embedded broker already
    refuses the CONNECT, whose will is on the other root.)
    """
    handler = _Collect()
    link = _link(mosquitto.url, mosquitto.password("bridge"), handler)
    link.settings = replace(link.settings, topics=Topics("elsewhere"))

    async def story() -> None:
        async with asyncio.timeout(20):
            with pytest.raises(MqttError, match="on 3 connections in a row"):
                await link.run()

    play(story)
    assert handler.primed == 0
