"""amqtt 0.12.1's `Broker`, hardened: each override closes one known defect (the table below).

`HardenedBroker` keeps amqtt's routing, subscriptions and plugin system and replaces only the
methods below (line numbers of the released `amqtt/broker.py`): connection admission and
takeover here, message routing in its base class `broker.routing.RoutingBroker`, and the
per-connection protocol in `broker.connection.FabricProtocolHandler`. Nothing is monkeypatched:
all three are subclasses, and amqtt is pinned to the exact version they were written against.

| defect | amqtt behaviour replaced | override |
|---|---|---|
| 1 retained replay past the ACL | `_handle_client_session` (~599) replays retained messages for every filter of *every* client; `_publish_retained_messages_for_subscription` (~1134) checks no ACL | no replay on reconnect (MQTT sends retained messages on SUBSCRIBE only, as mosquitto does); `_publish_retained_messages_for_subscription` checks RECEIVE per retained topic; `_publish_session_retained_messages` (offline queue) re-checks RECEIVE too |
| 2 wills skip the ACL | `_handle_disconnect` (~675) publishes and retains the will unchecked | a will topic must be a valid publish topic (not empty, wildcard or `$`) and pass `will_filtering` (or a PUBLISH check) at CONNECT, else CONNACK 5; at publication it is checked again and dropped when denied (as mosquitto does) |
| 3 keepalive never enforced | `_reader_loop` waits 1 x KA then calls a no-op; the CONNECT read has no timeout | `FabricProtocolHandler._reader_loop` (ceil(1.5 x KA), stalled packets); `_initialize_client_session` reads the CONNECT within `Limits.connect_timeout` (TLS handshake included) |
| 4 QoS 1 PUBACK before routing | `_handle_qos1_message_flow` (handler ~329) acks on enqueue; on disconnect the queue is dropped | the handler only enqueues; `_client_message_loop` routes in arrival order and then acknowledges (PUBACK, and PUBCOMP for QoS 2); `_handle_disconnect` first routes everything still queued, then publishes the will |
| 5 session touched before authentication | `_initialize_client_session` (~508) deletes or rewrites the stored session, and the takeover (~565) kicks the victim, before `_authenticate` | `_initialize_client_session` only reads the CONNECT; `_handle_client_session` authenticates first, refuses with CONNACK 5 without touching any session, and only then takes over |
| 6 takeover leaves the old connection open | (~570) `handle_connection_closed()` + `stop()` on the old handler while its socket stays open; persistent sessions then receive nothing | `_take_over` aborts the old transport, waits (bounded) until its session handling finished (will included), then resumes or replaces the session; the old will is suppressed only when both connections are persistent (mosquitto) |
| 7 exception in authentication | an exception in a plugin escapes `_authenticate` (~818) and the client never gets a CONNACK | `_authenticate` turns any exception into a refusal; `stream_connected` catches anything left so a connection always ends closed |
| 8 malformed packet leaves the connection open | `_reader_loop` logs "Message discarded" and carries on (~532); an invalid PUBLISH topic breaks `_client_message_loop` (~644) with the client still connected | framing and validation in `FabricProtocolHandler`; an invalid PUBLISH topic aborts the connection and the loop ends through the normal disconnect path (will included) |

`FabricProtocolHandler.ended` records how a connection ended once and for all: amqtt resets its
`_disconnect_waiter` to None after a DISCONNECT, so a message loop that started waiting late saw
"lost" and published the will of a client that had disconnected cleanly.

Pre-authentication bounds (an unauthenticated client must not exhaust descriptors or memory):
a listener (`broker.listening.GatedListener`, one accept at a time) holds at most
`Limits.max_connections` connections (more are closed as soon as accepted, counted and logged
rate-limited); a connection must complete its CONNECT within
`Limits.connect_timeout`, and a CONNECT longer than `Limits.max_connect` bytes is refused
unread; each stream buffers at most about 2 x 16 KiB of unread input.

Also replaced: `_client_connected` (~446) so that a connection that ends before a usable CONNECT
(a port probe, a timeout) is logged once by us and not again by amqtt; `_topic_filtering` (~893) calls the topic plugins in sequence instead of one task
per plugin per check (measurably faster) and treats an exception as a denial;
`_session_monitor` (~356) removes a disconnected clean session only if it is still the registered
one (amqtt's awaits between listing and removing could drop a session that had just reconnected);
`_create_server_instance` serves pre-bound sockets through `GatedListener`, so the embedded broker reports "address in
use" as a one-line error naming the flag and supports port 0.

A refused CONNECT is logged at WARNING with the client id, the username and the reason
(`session.attributes[REFUSAL_ATTRIBUTE]`, set by the auth plugin; plugins themselves do not log),
rate-limited per peer address and reason (`broker.throttling`): a login flood from one host is
one line and a summary per interval, and every refusal is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import weakref
from collections.abc import Mapping
from functools import partial
from typing import Any, Final

from amqtt.adapters import StreamReaderAdapter
from amqtt.errors import MQTTError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, SERVER_UNAVAILABLE, ConnackPacket
from amqtt.mqtt.packet import CONNECT
from amqtt.session import Session
from amqtt.utils import gen_client_id
from typing_extensions import override

from devicefabric.broker.connection import (
    AbortableWriter,
    ConnectionEndedError,
    FabricProtocolHandler,
    Limits,
    PacketBuffer,
    ProtocolViolationError,
    frame_bytes,
    read_frame,
)
from devicefabric.broker.listening import GatedListener
from devicefabric.broker.routing import RoutingBroker
from devicefabric.config.errors import TopicError
from devicefabric.config.topics import validate_publish_topic

log = logging.getLogger("devicefabric.broker")

REFUSAL_ATTRIBUTE: Final = "devicefabric.refusal"
"""Session attribute where an auth plugin leaves the reason of a refusal (for the log line)."""

ListenSocket = tuple[socket.socket, ssl.SSLContext | None]
_READ_BUFFER: Final = 16 * 1024


class _NoSessionError(Exception):
    """The connection ended before a CONNECT could be accepted (already logged and closed)."""


class _RefusedError(Exception):
    def __init__(self, reason: str, code: int = NOT_AUTHORIZED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class HardenedBroker(RoutingBroker):
    """amqtt's MQTT 3.1.1 broker with the overrides listed in the module docstring."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        limits: Limits | None = None,
        sockets: Mapping[str, ListenSocket] | None = None,
    ) -> None:
        super().__init__(config, limits or Limits())
        self._sockets = dict(sockets or {})
        self._client_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.connection_tasks: set[asyncio.Task[Any]] = set()

    # -- listeners -----------------------------------------------------------------------------
    @override
    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: Any, port: int, ssl_context: Any
    ) -> asyncio.Server | GatedListener:
        if listener_name not in self._sockets:
            stock: asyncio.Server = await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
            return stock
        sock, context = self._sockets[listener_name]
        return GatedListener(
            sock,
            partial(self.stream_connected, listener_name=listener_name),
            max_connections=self.limits.max_connections,
            context=context,
            handshake_timeout=self.limits.connect_timeout,
            read_limit=_READ_BUFFER,
            on_refusal=partial(self.refuse, listener_name),
        )

    @override
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        adapter = AbortableWriter(writer, self.limits.close_grace)
        task = asyncio.current_task()
        if task is not None:
            self.connection_tasks.add(task)
        try:
            await self._client_connected(listener_name, StreamReaderAdapter(reader), adapter)
        except _NoSessionError:
            pass  # logged where it was decided
        except Exception:
            log.exception("connection handling failed; closing it")
        finally:
            adapter.abort()
            if task is not None:
                self.connection_tasks.discard(task)

    @override
    async def _client_connected(
        self, listener_name: str, reader: Any, writer: AbortableWriter
    ) -> None:
        server = self._servers[listener_name]
        await server.acquire_connection()
        try:
            peer = writer.get_peer_info() or ("?", 0)
            handler, session = await self._initialize_client_session(reader, writer, *peer)
            await self._handle_client_session(
                reader, writer, session, handler, server, listener_name
            )
        finally:
            server.release_connection()

    # -- connect: read, authenticate, then take over (defects 3, 5, 6, 7) ------------------------
    @override
    async def _initialize_client_session(
        self, reader: Any, writer: AbortableWriter, remote_address: str, remote_port: int
    ) -> tuple[FabricProtocolHandler, Session]:
        peer = f"{remote_address}:{remote_port}"
        try:
            handler, session = await self._read_connect(reader, writer)
        except ConnectionEndedError as exc:  # e.g. a port probe
            log.debug("%s closed before sending a CONNECT", peer)
            raise _NoSessionError from exc
        except MQTTError as exc:  # amqtt refused it (protocol level, credentials flags...)
            log.warning("CONNECT from %s refused: %s", peer, exc, extra={"reason": "bad_connect"})
            await writer.close()
            raise _NoSessionError from exc
        except TimeoutError as exc:
            log.warning("no CONNECT from %s in time", peer, extra={"reason": "connect_timeout"})
            writer.abort()
            raise _NoSessionError from exc
        except Exception as exc:
            log.warning("bad CONNECT from %s: %s", peer, exc, extra={"reason": "bad_connect"})
            writer.abort()
            raise _NoSessionError from exc
        handler.limits = self.limits
        if not session.client_id:
            session.client_id = gen_client_id()
        session.parent = 0
        return handler, session

    async def _read_connect(
        self, reader: Any, writer: AbortableWriter
    ) -> tuple[FabricProtocolHandler, Session]:
        """The first packet, framed within `connect_timeout`; amqtt then checks it as a CONNECT."""
        timeout = self.limits.connect_timeout
        header, body = await read_frame(reader, timeout, timeout, self.limits.max_connect)
        if header.packet_type != CONNECT:
            raise ProtocolViolationError(f"first packet is type {header.packet_type}, not CONNECT")
        connect = PacketBuffer(frame_bytes(header, body))
        handler: FabricProtocolHandler
        session: Session
        handler, session = await FabricProtocolHandler.init_from_connect(
            connect, writer, self.plugins_manager
        )
        return handler, session

    @override
    async def _handle_client_session(
        self,
        reader: Any,
        writer: AbortableWriter,
        client_session: Session,
        handler: FabricProtocolHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        client_id = client_session.client_id
        try:
            await self._admit(client_session, listener_name)
            lock = self._client_locks.setdefault(client_id, asyncio.Lock())
            async with lock:
                session = await self._take_over(client_session)
                session.transitions.connect()
                handler.attach(session, reader, writer)
                entry = self._sessions[client_id] = (session, handler)
        except _RefusedError as refused:  # rate-limited per peer address: a login flood is one line
            self.refuse(
                f"peer {client_session.remote_address}",
                refused.reason,
                f"user {client_session.username!r}, client id {client_id!r}",
                level=logging.WARNING,
            )
            with contextlib.suppress(OSError):
                await ConnackPacket.build(0, refused.code).to_stream(writer)
            await writer.close()
            return
        try:
            await handler.mqtt_connack_authorize(authorize=True)
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
            )
            await handler.start()
            await self._publish_session_retained_messages(session)
            await self._client_message_loop(session, handler)
        finally:
            handler.abort()
            ours = self._sessions.get(client_id) is entry
            if ours and session.transitions.is_connected():  # the loop ended without a disconnect
                await self._stop_handler(handler)
                session.transitions.disconnect()
            if ours and session.clean_session:
                del self._sessions[client_id]
                await self._del_all_subscriptions(session)
                session.clear_queues()
            handler.finished.set()

    async def _admit(self, session: Session, listener_name: str) -> None:
        """Raise `_RefusedError` unless the CONNECT's will and credentials are acceptable."""
        if session.will_flag:
            try:
                validate_publish_topic(session.will_topic or "")
            except TopicError as exc:
                raise _RefusedError("invalid_will_topic") from exc
            if len(session.will_message or b"") > self.limits.max_payload:
                raise _RefusedError("will_too_large")
        if not await self._authenticate(session, self.listeners_config[listener_name]):
            raise _RefusedError(str(session.attributes.get(REFUSAL_ATTRIBUTE, "not_authorized")))
        if session.will_flag and not await self._will_permitted(session):
            raise _RefusedError("will_not_allowed")

    @override
    async def _authenticate(self, session: Session, listener: Any) -> bool:
        try:
            return bool(await super()._authenticate(session, listener))
        except Exception:
            log.exception("authentication raised; refusing", extra={"client_id": session.client_id})
            session.attributes[REFUSAL_ATTRIBUTE] = "auth_error"
            return False

    async def _take_over(self, incoming: Session) -> Session:
        """Evict a connected holder of the client id, then resume or replace its session."""
        client_id = incoming.client_id
        existing = self._sessions.get(client_id)
        if existing is not None:
            old_session, old_handler = existing
            if old_session.transitions.is_connected():
                log.info(
                    "client id taken over; closing the old connection",
                    extra={"client_id": client_id},
                )
                if not incoming.clean_session and not old_session.clean_session:
                    old_session.will_flag = False  # the session lives on: no will (as mosquitto)
                old_handler.abort()
            if isinstance(old_handler, FabricProtocolHandler):  # let it finish (will included)
                try:
                    async with asyncio.timeout(self.limits.takeover_timeout):
                        await old_handler.finished.wait()
                except TimeoutError as exc:
                    raise _RefusedError("takeover_timeout", SERVER_UNAVAILABLE) from exc
            existing = self._sessions.get(client_id)
        if existing is not None and existing[0].transitions.is_connected():
            raise _RefusedError("takeover_failed", SERVER_UNAVAILABLE)
        if incoming.clean_session or existing is None or existing[0].clean_session:
            if existing is not None:
                await self._delete_session(client_id)
            return incoming
        session = existing[0]
        for attr in (
            "will_flag",
            "will_message",
            "will_topic",
            "will_qos",
            "will_retain",
            "keep_alive",
            "username",
            "password",
            "remote_address",
            "remote_port",
            "ssl_object",
        ):
            setattr(session, attr, getattr(incoming, attr))
        session.parent = 1
        return session

    def disconnect_client(self, client_id: str, reason: str) -> bool:
        """Drop a connected client (its will fires); False when it is not connected."""
        entry = self._sessions.get(client_id)
        if entry is None or not entry[0].transitions.is_connected():
            return False
        log.warning("disconnecting client", extra={"client_id": client_id, "reason": reason})
        entry[1].abort()
        return True

    # -- housekeeping --------------------------------------------------------------------------
    @override
    async def _session_monitor(self) -> None:
        while True:
            await asyncio.sleep(1)
            for client_id, entry in list(self._sessions.items()):
                session = entry[0]
                stale = session.transitions.state == "disconnected" and (
                    session.clean_session or session.is_anonymous
                )
                if stale and self._sessions.get(client_id) is entry:
                    del self._sessions[client_id]
                    await self._del_all_subscriptions(session)
                    session.clear_queues()
