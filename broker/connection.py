"""One client connection of the hardened broker: framing, keepalive, protocol errors, acks.

`FabricProtocolHandler` subclasses amqtt 0.12.1's `BrokerProtocolHandler`; `broker.hardening`
creates it for every connection. What each override replaces (line numbers of the released files):

- `_reader_loop` (`mqtt/protocol/handler.py` ~443-550) is replaced. amqtt parses each packet field
  by field straight from the socket, waits 1 x keepalive for a header and then calls
  `handle_read_timeout()`, a no-op (`broker_handler.py` ~86), reads packet bodies and CONNECTs
  with no timeout, and on a malformed packet logs "Message discarded" and reads on from wherever
  the parser stopped (~532), so the stream desynchronises and the connection stays open. Here a
  packet is framed first (fixed header, then exactly `remaining_length` bytes) and parsed from
  that buffer:
  * keepalive (MQTT-3.1.2-24): a whole packet must arrive within ceil(1.5 x keepalive) of the
    previous one, else the transport is aborted (not `close()`d: closing drains, which never
    returns for a frozen peer) and the broker publishes the will. Keepalive 0 means no idle limit;
    a packet that has started must still complete within `Limits.stall_timeout`.
  * protocol errors close the connection: reserved or server-to-client packet types, wrong fixed
    header flags or lengths, a second CONNECT, bytes left over or missing after parsing, QoS 3,
    a SUBSCRIBE without filters or with bad QoS bytes, a PUBLISH payload above
    `Limits.max_payload` (amqtt would buffer anything), or a body above the frame limit (refused
    before it is read).
  * incoming QoS 0/1 messages are queued for routing in the order they arrive, with no task per
    packet; the PUBACK is *not* sent here (amqtt acks before routing, ~329-336): the broker
    acknowledges after routing (`acknowledge`). QoS 2 keeps the message in `inflight_in` on
    PUBLISH (PUBREC), queues it on PUBREL, and the broker sends PUBCOMP once it is routed.
  * packets whose handling writes to the socket (PINGRESP, PUBREC) run in tasks owned by the loop,
    so a client that stops reading cannot stall the reader (and with it, keepalive enforcement).
- `stop` aborts the transport before amqtt's `stop()`, whose `writer.close()` drains and so never
  returns for a peer that stopped reading.
- `_retry_deliveries` (handler.py ~174) retries only outgoing messages: incoming QoS 2 state lives
  in `inflight_in` and completes when the client resends PUBREL, instead of in amqtt's waiters.

`AbortableWriter` is amqtt's `StreamWriterAdapter` with `abort()` and a bounded `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.session import IncomingApplicationMessage
from typing_extensions import override

from devicefabric.broker.settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from devicefabric.config.wire import MAX_PAYLOAD_BYTES

log = logging.getLogger("devicefabric.broker")

# MQTT 3.1.1 table 2.2: the fixed-header flags each client-to-server packet must carry
# (PUBLISH carries DUP/QoS/RETAIN and is checked separately), and table 2.1's fixed lengths.
_REQUIRED_FLAGS: Final = {
    CONNECT: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    UNSUBSCRIBE: 2,
    PINGREQ: 0,
    DISCONNECT: 0,
}
_FIXED_LENGTH: Final = {PUBACK: 2, PUBREC: 2, PUBREL: 2, PUBCOMP: 2, PINGREQ: 0, DISCONNECT: 0}
# A topic (2-byte length + up to 65535 bytes) and a packet id around the payload.
_PUBLISH_OVERHEAD: Final = 2 + 65_535 + 2


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits of the hardened broker (all times in seconds)."""

    max_payload: int = MAX_PAYLOAD_BYTES
    """Largest PUBLISH (and will) payload in bytes; a larger PUBLISH closes the connection."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    """From TCP accept (TLS handshake included) to a complete CONNECT; then the socket is aborted."""
    keepalive_factor: float = 1.5
    """Silence allowed, in keepalive periods, before the connection is dropped (MQTT-3.1.2-24)."""
    stall_timeout: float = 30.0
    """Once a packet's first byte arrived, the rest must follow within this (also at keepalive 0)."""
    close_grace: float = 1.0
    """Time to flush a refusal CONNACK before the socket is aborted."""
    takeover_timeout: float = 5.0
    """How long a takeover waits for the old connection to finish (will included)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections per listener (`--max-connections`); more are closed at once on accept."""
    max_connect: int = 8 * 1024
    """Largest CONNECT packet in bytes: all a client may send before it is authenticated."""
    max_outgoing: int = 10_000
    """Deliveries in progress per connection; past it QoS 0 is dropped, QoS 1/2 disconnects."""
    max_outgoing_bytes: int = 16 * 1024 * 1024
    """Payload bytes in progress per connection, with the same consequences as `max_outgoing`."""
    max_queued_offline: int = 1000
    """QoS 1/2 messages queued per offline persistent session (mosquitto's default); QoS 0 never."""
    max_subscriptions: int = 1000
    """Topic filters one client may hold; more are refused (SUBACK 0x80)."""

    @property
    def max_frame(self) -> int:
        """Largest `remaining_length` read at all; anything larger is refused unread."""
        return self.max_payload + _PUBLISH_OVERHEAD

    def idle_timeout(self, keepalive: int) -> float | None:
        """Silence allowed for a client's keepalive (None: keepalive 0 disables the check)."""
        return math.ceil(self.keepalive_factor * keepalive) if keepalive > 0 else None


class ProtocolViolationError(Exception):
    """The client broke MQTT 3.1.1 framing or packet rules; the connection must close."""


class ConnectionEndedError(Exception):
    """The client closed the stream (EOF, reset) between or inside packets."""


class PacketBuffer(ReaderAdapter):  # type: ignore[misc]  # amqtt is untyped
    """A packet body as a reader for amqtt's parsers; short reads raise like amqtt's `NoDataError`."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(self._pos + n, len(self._data))
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk

    def feed_eof(self) -> None:
        return None

    @property
    def left(self) -> int:
        return len(self._data) - self._pos


async def _read_exactly(reader: Any, n: int) -> bytes:
    try:
        data: bytes = await reader.read(n)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ConnectionEndedError from exc
    if len(data) < n:
        raise ConnectionEndedError
    return data


async def read_frame(
    reader: Any, idle: float | None, stall: float, max_frame: int
) -> tuple[MQTTFixedHeader, bytes]:
    """Read one packet: its fixed header and exactly `remaining_length` body bytes.

    The first byte must come within `idle` seconds (None: no limit); the whole packet within
    `idle` (or `stall` seconds after its first byte when `idle` is None).
    """
    loop = asyncio.get_running_loop()
    deadline = None if idle is None else loop.time() + idle
    async with asyncio.timeout_at(deadline):
        first = (await _read_exactly(reader, 1))[0]
    if deadline is None:
        deadline = loop.time() + stall
    async with asyncio.timeout_at(deadline):
        length, multiplier = 0, 1
        for _ in range(4):
            byte = (await _read_exactly(reader, 1))[0]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        else:
            raise ProtocolViolationError("remaining length longer than 4 bytes")
        header = MQTTFixedHeader(first >> 4, first & 0x0F, length)
        _check_header(header, max_frame)
        body = await _read_exactly(reader, length) if length else b""
    return header, body


def _check_header(header: MQTTFixedHeader, max_frame: int) -> None:
    kind, flags, length = header.packet_type, header.flags, header.remaining_length
    if kind == PUBLISH:
        if (flags >> 1) & 0x03 == 3:
            raise ProtocolViolationError("PUBLISH with QoS 3")
    elif kind not in _REQUIRED_FLAGS:
        raise ProtocolViolationError(f"packet type {kind} may not be sent by a client")
    elif flags != _REQUIRED_FLAGS[kind]:
        raise ProtocolViolationError(f"packet type {kind} with reserved flags {flags:#x}")
    expected = _FIXED_LENGTH.get(kind)
    if expected is not None and length != expected:
        raise ProtocolViolationError(f"packet type {kind} with remaining length {length}")
    if length > max_frame:
        raise ProtocolViolationError(f"packet of {length} bytes exceeds the {max_frame} limit")


async def parse_packet(header: MQTTFixedHeader, body: bytes) -> Any:
    """amqtt's packet object for a framed packet; any parser complaint is a violation."""
    buffer = PacketBuffer(body)
    try:
        packet = await packet_class(header).from_stream(buffer, fixed_header=header)
    except Exception as exc:
        raise ProtocolViolationError(f"malformed packet type {header.packet_type}: {exc}") from exc
    if buffer.left:
        raise ProtocolViolationError(f"{buffer.left} unparsed bytes in packet {header.packet_type}")
    return packet


def frame_bytes(header: MQTTFixedHeader, body: bytes) -> bytes:
    return bytes(header.to_bytes()) + body


class AbortableWriter(StreamWriterAdapter):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's stream writer with `abort()`, and a `close()` that gives up after `grace` seconds."""

    def __init__(self, writer: asyncio.StreamWriter, grace: float) -> None:
        super().__init__(writer)
        self._transport = writer.transport
        self._grace = grace

    def abort(self) -> None:
        """Drop the connection now: unsent data is discarded and pending reads end."""
        self.is_closed = True
        self._transport.abort()

    @override
    async def close(self) -> None:
        try:
            async with asyncio.timeout(self._grace):
                await super().close()
        except (TimeoutError, OSError):
            pass
        finally:
            self.abort()


class FabricProtocolHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker-side protocol handler with framing, keepalive and ack-after-routing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = Limits()
        self.finished = asyncio.Event()
        """Set by the broker when this connection's session handling has ended (will included)."""
        self.ended: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        """How the connection ended: the DISCONNECT packet, or None when it was lost. Unlike
        amqtt's `_disconnect_waiter` it is never reset, so a loop that starts waiting late still
        sees a clean DISCONNECT as clean (amqtt would then report None and publish the will)."""
        self._tasks: set[asyncio.Task[None]] = set()

    def abort(self) -> None:
        if isinstance(self.writer, AbortableWriter):
            self.writer.abort()

    @override
    async def stop(self) -> None:
        self.abort()
        self._end(None)
        await super().stop()

    @override
    async def handle_disconnect(self, disconnect: Any) -> None:
        self._end(disconnect)
        await super().handle_disconnect(disconnect)

    def _end(self, how: Any) -> None:
        if not self.ended.done():
            self.ended.set_result(how)

    async def acknowledge(self, message: IncomingApplicationMessage) -> None:
        """Complete an incoming QoS 1 (PUBACK) or QoS 2 (PUBCOMP) flow once it was routed."""
        if message.qos == QOS_1:
            await self._send_packet(PubackPacket.build(message.packet_id))
        elif message.qos == QOS_2:
            await self._send_packet(PubcompPacket.build(message.packet_id))

    @override
    async def _retry_deliveries(self) -> None:
        if self.session is None:
            return
        pending = list(self.session.inflight_out.values())
        if pending:
            await asyncio.gather(
                *(asyncio.wait_for(self._handle_message_flow(m), 10) for m in pending),
                return_exceptions=True,
            )

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @override
    async def _reader_loop(self) -> None:
        session = self.session
        client_id = session.client_id if session is not None else None
        try:
            if self._reader_ready is not None:
                self._reader_ready.set()
            if session is None or self.reader is None:
                return
            idle = self.limits.idle_timeout(session.keep_alive)
            while True:
                header, body = await read_frame(
                    self.reader, idle, self.limits.stall_timeout, self.limits.max_frame
                )
                packet = await parse_packet(header, body)
                await self.plugins_manager.fire_event(
                    MQTTEvents.PACKET_RECEIVED, packet=packet, session=session
                )
                if not await self._dispatch(header.packet_type, packet):
                    return
        except TimeoutError:
            log.warning(
                "no packet within %.0fs (keepalive %ss); dropping the connection",
                self.limits.idle_timeout(session.keep_alive if session else 0) or 0,
                session.keep_alive if session else "?",
                extra={"client_id": client_id, "reason": "keepalive_timeout"},
            )
        except ProtocolViolationError as exc:
            log.warning(
                "protocol violation: %s; closing the connection",
                exc,
                extra={"client_id": client_id, "reason": "protocol_violation"},
            )
        except ConnectionEndedError:
            pass
        except asyncio.CancelledError:
            pass  # stop() cancels the reader and then waits for `_reader_stopped`
        finally:
            self.abort()
            for task in list(self._tasks):
                task.cancel()
            await self.handle_connection_closed()
            self._reader_stopped.set()

    async def _dispatch(self, kind: int, packet: Any) -> bool:  # noqa: C901 - a flat branch per packet type
        """Handle one parsed packet; False when the client disconnected."""
        if kind == PUBLISH:
            self._receive_publish(packet)
        elif kind == PUBREL:
            self._receive_pubrel(packet.packet_id)
        elif kind == PUBACK:
            await self.handle_puback(packet)
        elif kind == PUBREC:
            await self.handle_pubrec(packet)
        elif kind == PUBCOMP:
            await self.handle_pubcomp(packet)
        elif kind == SUBSCRIBE:
            topics = packet.payload.topics
            if not topics or any(qos not in (QOS_0, QOS_1, QOS_2) for _, qos in topics):
                raise ProtocolViolationError("SUBSCRIBE without filters or with an invalid QoS")
            await self.handle_subscribe(packet)
        elif kind == UNSUBSCRIBE:
            if not packet.payload.topics:
                raise ProtocolViolationError("UNSUBSCRIBE without filters")
            await self.handle_unsubscribe(packet)
        elif kind == PINGREQ:
            self._spawn(self.handle_pingreq(packet))
        elif kind == DISCONNECT:
            await self.handle_disconnect(packet)
            return False
        else:  # CONNECT: only the first packet may be one (MQTT-3.1.0-2)
            raise ProtocolViolationError("second CONNECT on a connection")
        return True

    def _receive_publish(self, packet: Any) -> None:
        session = self.session
        qos, packet_id, data = packet.qos, packet.variable_header.packet_id, packet.data
        if qos != QOS_0 and not packet_id:
            raise ProtocolViolationError("PUBLISH with QoS > 0 and packet id 0")
        if qos == QOS_0 and packet.dup_flag:
            raise ProtocolViolationError("QoS 0 PUBLISH with DUP set (MQTT-3.3.1-2)")
        if len(data) > self.limits.max_payload:
            raise ProtocolViolationError(
                f"payload of {len(data)} bytes exceeds the {self.limits.max_payload}-byte limit"
            )
        message = IncomingApplicationMessage(
            packet_id, packet.topic_name, qos, data, packet.retain_flag
        )
        message.publish_packet = packet
        if qos == QOS_2:
            # Stored until PUBREL; a DUP resend of a stored id is only acknowledged again.
            session.inflight_in.setdefault(packet_id, message)
            self._spawn(self._send_packet(PubrecPacket.build(packet_id)))
        else:
            session.delivered_message_queue.put_nowait(message)

    def _receive_pubrel(self, packet_id: int) -> None:
        message = self.session.inflight_in.pop(packet_id, None)
        if message is None:  # already routed (a resent PUBREL): complete the flow again
            self._spawn(self._send_packet(PubcompPacket.build(packet_id)))
        else:
            self.session.delivered_message_queue.put_nowait(message)
