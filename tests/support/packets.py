"""Raw MQTT 3.1.1 packets as bytes, for what a client library will not do.

Tests use them to go silent mid-keepalive, stall mid-packet or send malformed packets; the
benchmarks use them as a load generator with no client library in the way. Only the packets we
send are built here (CONNECT, PUBLISH, SUBSCRIBE); what comes back is read by the caller.

- `connect_packet(client_id, username, password, keepalive=, will=, will_retain=, clean=)`: a
  `will` is (topic, payload), registered at QoS 1 (retained with `will_retain`).
- `publish_packet(topic, payload, qos=, packet_id=, retain=)`: the packet id is sent for QoS>0.
- `subscribe_packet(topic_filter, qos=, packet_id=, flags=)`: `flags` other than 2 is a protocol
  violation the broker must refuse.
- `publish_size(topic, payload, qos)`: the bytes a PUBLISH takes on the wire.
"""

from __future__ import annotations

import asyncio
import struct

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (the remaining length)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(value: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string (or binary data)."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    keepalive: int = 60,
    will: tuple[str, bytes] | None = None,
    will_retain: bool = False,
    clean: bool = True,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    payload = string(client_id)
    if will is not None:
        flags |= 0x04 | (1 << 3) | (0x20 if will_retain else 0)  # will flag, will QoS 1, retain
        payload += string(will[0]) + string(will[1])
    if username is not None:
        payload += string(username)
    if password is not None:
        payload += string(password)
    return packet(0x10, string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def publish_packet(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, *, retain: bool = False
) -> bytes:
    body = string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def subscribe_packet(topic_filter: str, qos: int = 0, packet_id: int = 1, flags: int = 2) -> bytes:
    return packet(0x80 | flags, struct.pack("!H", packet_id) + string(topic_filter) + bytes([qos]))


def publish_size(topic: str, payload: bytes, qos: int = 0) -> int:
    """Bytes of the PUBLISH on the wire: fixed header, topic, packet id (QoS>0), payload."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    return 1 + len(varint(body)) + body


class ConnackThenClose:
    """An `asyncio.start_server` handler: a broker that accepts the CONNECT (CONNACK 0) and is
    gone before anything else; `accepted` counts the connections."""

    def __init__(self) -> None:
        self.accepted = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await reader.read(2)  # the start of CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK accepted, then gone before any SUBACK
        await writer.drain()
        writer.close()
