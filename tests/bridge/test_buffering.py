"""Buffered socket reads (`bridge.buffering`): many packets per `recv`, nothing stranded.

A burst of small messages arrives in few large segments, packets cross the 64 KiB chunk
boundaries, and the last message of the burst must be delivered without any later traffic to
wake the selector (bytes already read are invisible to it). Over plain TCP and over TLS (where
the TLS layer may hold decrypted bytes too). Real mosquitto with our generated config.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devicefabric.bridge.mqtt import LinkSettings, MqttLink
from devicefabric.bridge.service import default_client_id
from devicefabric.config.settings import parse_broker_url
from devicefabric.config.topics import DEFAULT_ROOT, Topics
from tests.bridge.scene import until
from tests.support.brokers import prepare_mosquitto, running
from tests.support.mqtt import connect

T = Topics(DEFAULT_ROOT)
BURST = 3000


class _Counter:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.primed = False

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:  # noqa: ARG002
        if topic == T.desired("buf-a"):
            self.payloads.append(payload)

    def on_connected(self) -> None:
        pass

    async def to_reread(self) -> list[list[str]]:
        return []

    def on_primed(self) -> None:
        self.primed = True

    def on_lost(self) -> None:
        pass


@pytest.mark.mosquitto
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_burst_is_delivered_whole_in_order_and_nothing_waits_in_the_buffer(
    tmp_path: Path, secret: bytes, tls: bool
) -> None:
    files = None
    if tls:
        from tests.broker.test_mosquitto_tls import make_ca_and_server  # noqa: PLC0415

        files = make_ca_and_server(tmp_path)
    broker = prepare_mosquitto(tmp_path, secret, ["buf-a"], tls=files)
    handler = _Counter()
    with running(broker):
        link = MqttLink(
            LinkSettings(
                broker=parse_broker_url(broker.url),
                password=broker.password("bridge"),
                client_id=default_client_id(),
                topics=T,
                tls_ca=files[0] if files else None,
            ),
            handler,
        )
        # sizes that do not divide 64 KiB: packets straddle every chunk boundary
        sent = [f"{n:05d}:".encode() + b"x" * (37 + n % 91) for n in range(BURST)]

        async def story() -> None:
            task = asyncio.create_task(link.run())
            try:
                await until(lambda: handler.primed, 15, "primed")
                with connect(broker, "bridge", client_id="bridge_burst") as publisher:
                    infos = [
                        publisher.paho.publish(T.desired("buf-a"), payload, qos=0)
                        for payload in sent
                    ]
                    await until(lambda: all(i.is_published() for i in infos), 15, "all written")
                    # no further traffic: the last one must come out of the buffer by itself
                    await until(lambda: len(handler.payloads) == BURST, 15, "the whole burst")
                assert handler.payloads == sent
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(story())
