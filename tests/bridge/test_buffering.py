"""Buffered socket reads (`runtime.mqttbuffer`): many packets per `recv`, nothing stranded.

A burst of small messages arrives in few large segments, packets cross the 64 KiB chunk
boundaries, and the last message of the burst must be delivered without any later traffic to
wake the selector (bytes already read are invisible to it). Over plain TCP and over TLS (where
the TLS layer may hold decrypted bytes too). Real mosquitto with our generated config, also
behind a proxy that cuts the broker's bytes into 1-7 byte segments (reads end inside packets).
The client alone on a socket pair: the same stream in one segment, byte by byte and in uneven
pieces gives every packet whole and in order; a closed connection's half packet is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from devicefabric.config.topics import DEFAULT_ROOT, Topics
from devicefabric.runtime.mqttbuffer import CHUNK, FAST_BATCH, BufferedClient, qos0_publish_at
from tests.support import bridges as scene
from tests.support.bridges import until
from tests.support.brokers import BrokerProcess, prepare_mosquitto, running

T = Topics(DEFAULT_ROOT)
BURST = 3000


def _publish(topic: bytes, payload: bytes, first: int = 0x30) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            return bytes([first]) + encoded + body


BIG = _publish(b"t/big", b"p" * 200)  # a two-byte remaining length


@pytest.mark.parametrize(
    ("buf", "pos", "found"),
    [
        (_publish(b"a/b", b"xy"), 0, (4, 7, 9)),
        (b"junk" + _publish(b"a/b", b"xy"), 4, (8, 11, 13)),
        (_publish(b"a/b", b""), 0, (4, 7, 7)),  # an empty payload: a cleared retained document
        (_publish(b"a/b", b"xy", first=0x31), 0, (4, 7, 9)),  # retain
        (_publish(b"a/b", b"xy", first=0x39), 0, (4, 7, 9)),  # dup (meaningless at QoS 0)
        (BIG, 0, (5, 10, len(BIG))),
        (_publish(b"a/b", b"xy", first=0x32), 0, None),  # QoS 1: paho's, it is acknowledged
        (_publish(b"a/b", b"xy", first=0x34), 0, None),  # QoS 2
        (b"\x40\x02\x00\x01", 0, None),  # PUBACK
        (_publish(b"a/b", b"xy")[:-1], 0, None),  # not all here yet
        (BIG[:1], 0, None),  # the length not here yet
        (BIG[:2], 0, None),  # half of a two-byte length
        (b"\x30\x02\x00\x05", 0, None),  # a topic longer than the packet: malformed
        (b"\x30\x01\x00", 0, None),  # too short for a topic length
        (b"\x30\xff\xff\xff\xff\x01", 0, None),  # a length of more than four bytes
        (b"", 0, None),
    ],
)
def test_qos0_publish_at(buf: bytes, pos: int, found: tuple[int, int, int] | None) -> None:
    assert qos0_publish_at(buf, pos) == found


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


def _burst(broker: BrokerProcess, ca: Path | None, payloads: list[bytes]) -> None:
    """Publish `payloads` (QoS 0) as fast as paho writes them, with paho's own network thread
    (publishing from another thread only wakes it: one writer on the TLS stream)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bridge_burst")
    client.username_pw_set("bridge", broker.password("bridge"))
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(T.desired("buf-a"), payload, qos=0) for payload in payloads]
        for info in infos:
            info.wait_for_publish(15)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.mosquitto
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("fast_batch", [1, FAST_BATCH], ids=["one-per-read", "batched"])
def test_a_burst_is_delivered_whole_in_order_and_nothing_waits_in_the_buffer(
    tmp_path: Path, secret: bytes, tls: bool, fast_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one packet per read leaves hundreds in the buffer after a readable event's batch: they
    # must still be delivered though the socket has nothing more to say
    monkeypatch.setattr("devicefabric.runtime.mqttbuffer.FAST_BATCH", fast_batch)
    files = None
    if tls:
        from tests.support.tls import make_ca_and_server  # noqa: PLC0415

        files = make_ca_and_server(tmp_path)
    broker = prepare_mosquitto(tmp_path, secret, ["buf-a"], tls=files)
    handler = _Counter()
    with running(broker):
        link = scene.link(
            broker.url, broker.password("bridge"), handler, tls_ca=files[0] if files else None
        )
        # sizes that do not divide 64 KiB: packets straddle every chunk boundary
        sent = [f"{n:05d}:".encode() + b"x" * (37 + n % 91) for n in range(BURST)]

        async def story() -> None:
            task = asyncio.create_task(link.run())
            try:
                await until(lambda: handler.primed, 15, "primed")
                await asyncio.to_thread(_burst, broker, files[0] if files else None, sent)
                # no further traffic: the last one must come out of the buffer by itself
                await until(lambda: len(handler.payloads) == BURST, 15, "the whole burst")
                assert handler.payloads == sent
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(story())


# -- the client alone, on a socket pair: every way the same bytes can be cut into reads -------
PINGRESP = b"\xd0\x00"
QOS1 = _publish(b"t/q1", b"\x00\x07" + b"acked", first=0x32)  # packet id 7, then the payload
HUGE = _publish(b"t/huge", b"h" * (CHUNK + 5000))  # longer than one read of the buffer


def _stream() -> tuple[bytes, list[tuple[str, bytes]]]:
    """Heartbeat-sized PUBLISHes of varied sizes with a PINGRESP, a QoS 1 PUBLISH (paho's own
    path) and one packet longer than a chunk among them; and what must come out, in order."""
    wire, expected = b"", []
    for n in range(400):
        topic, payload = f"t/{n % 7}".encode(), f"{n:04d}".encode() + b"x" * (n % 150)
        wire += _publish(topic, payload, first=0x31 if n % 50 == 0 else 0x30)
        expected.append((topic.decode(), payload))
        if n == 100:
            wire += PINGRESP + QOS1
            expected.append(("t/q1", b"acked"))
        if n == 200:
            wire += HUGE
            expected.append(("t/huge", b"h" * (CHUNK + 5000)))
    return wire, expected


def _pieces(wire: bytes, cut: str) -> list[bytes]:
    if cut == "one-segment":
        return [wire]
    if cut == "byte-by-byte":
        return [wire[i : i + 1] for i in range(len(wire))]
    sizes = random.Random(18).choices([1, 2, 3, 5, 70, 1000, 9000], k=len(wire))  # uneven
    out, at = [], 0
    for size in sizes:
        if at >= len(wire):
            break
        out.append(wire[at : at + size])
        at += size
    return out


@pytest.mark.parametrize("cut", ["one-segment", "byte-by-byte", "uneven"])
def test_every_packet_comes_out_whole_and_in_order_however_the_stream_is_cut(cut: str) -> None:
    wire, expected = _stream()
    got: list[tuple[str, bytes]] = []
    client = BufferedClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    client.on_qos0_publish = lambda topic, payload, _retain: got.append((topic.decode(), payload))
    client.on_message = lambda _c, _u, msg: got.append((msg.topic, bytes(msg.payload)))
    ours, peer = socket.socketpair()
    ours.setblocking(False)  # noqa: FBT003 - socket API
    client._sock = ours  # a connected socket without a broker's handshake
    try:
        for piece in _pieces(wire, cut):
            peer.sendall(piece)
            # as `mqtt.Channel` does: read while the socket is readable or bytes are buffered
            while True:
                rc = client.loop_read()
                assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                if not client.buffered():
                    break
        assert got == expected  # nothing stranded after the last byte
        peer.setblocking(False)  # noqa: FBT003 - socket API
        assert peer.recv(16) == b"\x40\x02\x00\x07"  # the QoS 1 PUBLISH was acknowledged
        peer.close()
        assert client.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST  # end of stream
    finally:
        ours.close()
        peer.close()


def test_a_closed_connections_half_packet_is_not_parsed_on_the_next() -> None:
    got: list[bytes] = []
    client = BufferedClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    client.on_qos0_publish = lambda _topic, payload, _retain: got.append(payload)
    old, old_peer = socket.socketpair()
    old.setblocking(False)  # noqa: FBT003 - socket API
    client._sock = old
    old_peer.sendall(_publish(b"t/a", b"whole") + _publish(b"t/a", b"cut off")[:6])
    client.loop_read()  # one read: the whole one is delivered, the rest waits in the buffer
    assert got == [b"whole"]
    assert client.buffered()  # the start of the cut-off packet
    client._sock_close()  # what paho does when the connection is lost
    assert not client.buffered()
    new, new_peer = socket.socketpair()
    new.setblocking(False)  # noqa: FBT003 - socket API
    client._sock = new
    try:
        new_peer.sendall(_publish(b"t/a", b"fresh"))
        client.loop_read()
        assert got == [b"whole", b"fresh"]
    finally:
        for sock in (old_peer, new, new_peer):
            sock.close()


class _Resegmenter:
    """A TCP proxy in front of the broker that passes the broker's bytes on to the client in
    pieces of 1 to 7 bytes, each sent on its own (TCP_NODELAY): the client's reads end inside
    packets, wherever a piece ends. The client's bytes go to the broker unchanged."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by `close`
            while True:
                client, _ = self.listener.accept()
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                broker = socket.create_connection(self.upstream)
                self.sockets += [client, broker]
                threading.Thread(target=self._pump, args=(client, broker, 0), daemon=True).start()
                threading.Thread(target=self._pump, args=(broker, client, 7), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, piece: int) -> None:
        sizes = itertools.cycle(range(1, piece + 1)) if piece else None
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if sizes is None:
                    sink.sendall(data)
                    continue
                at = 0
                while at < len(data):
                    size = next(sizes)
                    sink.sendall(data[at : at + size])
                    at += size
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.mosquitto
def test_messages_cut_into_small_segments_on_the_way_are_delivered_whole(
    tmp_path: Path, secret: bytes
) -> None:
    broker = prepare_mosquitto(tmp_path, secret, ["buf-a"])
    handler = _Counter()
    sent = [f"{n:04d}:".encode() + b"y" * (n % 200) for n in range(300)]  # 1- and 2-byte lengths
    with running(broker):
        proxy = _Resegmenter(broker.host, broker.port)
        try:
            link = scene.link(f"mqtt://127.0.0.1:{proxy.port}", broker.password("bridge"), handler)

            async def story() -> None:
                task = asyncio.create_task(link.run())
                try:
                    await until(lambda: handler.primed, 15, "primed through the proxy")
                    await asyncio.to_thread(_burst, broker, None, sent)  # straight to the broker
                    await until(lambda: len(handler.payloads) == len(sent), 15, "every message")
                    assert handler.payloads == sent
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

            asyncio.run(story())
        finally:
            proxy.close()
