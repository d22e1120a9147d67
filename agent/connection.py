"""One MQTT connection (paho-mqtt 2.x) driven by the asyncio event loop: the paho <-> asyncio seam.

paho runs inside the event loop, with no network thread of its own: its socket is registered with
`loop.add_reader/add_writer` and driven by `loop_read/loop_write` (paho's socket callbacks say
when it wants to write); the owner calls `loop_misc` on a timer for keepalive. Only the blocking
TCP connect and TLS handshake run in a short-lived daemon thread, which hands the socket back
through `call_soon_threadsafe`. Every paho callback therefore runs on the loop thread, and no
lock is taken here.

A `Connection` is used once: connect, run until lost, never reconnect (paho's own reconnect is
off). A new connection is a new paho client, so nothing queued for an old one (an unacknowledged
publish) is ever replayed on a new one. `connack` resolves with the CONNACK reason (or fails when
the socket closed first); `lost` resolves when the link is gone, whoever closed it.

Sockets get TCP_NODELAY: fabric messages are small and latency-bound, and Nagle's algorithm
would hold one back until the previous one is acknowledged (40 ms delayed ACKs on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.config.settings import BrokerURL

log = logging.getLogger("devicefabric.agent.connection")

CONNECT_TIMEOUT_S: Final = 10.0  # TCP + TLS handshake, enforced by paho's socket timeout
CONNACK_TIMEOUT_S: Final = 10.0


class ConnectionLostError(Exception):
    """The connection closed before it was established (internal)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect."""

    broker: BrokerURL
    client_id: str
    username: str
    password: str
    keepalive: int
    tls_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class WillMessage:
    topic: str
    payload: bytes


class Connection:
    """One paho client, one socket; lives from connect to loss (see the module docstring)."""

    def __init__(self, endpoint: Endpoint, will: WillMessage, session: str) -> None:
        self.endpoint = endpoint
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.lost: asyncio.Future[str] = self.loop.create_future()
        self.abandoned = False
        self.subscribe_refused = asyncio.Event()  # a SUBACK carried a failure code
        self.live_desired = False  # a desired document arrived live (not replayed) on this link
        self._acks: dict[int, asyncio.Future[None]] = {}
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.username_pw_set(endpoint.username, endpoint.password)
        client.will_set(will.topic, will.payload, qos=1, retain=True)
        if endpoint.broker.tls:
            client.tls_set(ca_certs=str(endpoint.tls_ca) if endpoint.tls_ca else None)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client

    # -- connecting ----------------------------------------------------------------------------
    async def open(self) -> ReasonCode:
        """Connect and wait for CONNACK; OSError/TimeoutError/ConnectionLostError on failure."""
        broker = self.endpoint.broker
        done: asyncio.Future[None] = self.loop.create_future()

        def connect() -> None:
            try:
                self.client.connect(broker.host, broker.port, self.endpoint.keepalive)
            except BaseException as exc:  # handed to the loop, raised there
                self._threadsafe(_settle, done, exc)
            else:
                self._threadsafe(_settle, done, None)

        threading.Thread(target=connect, name="mqtt-connect", daemon=True).start()
        try:
            await done
        except asyncio.CancelledError:
            self.abandon()
            raise
        async with asyncio.timeout(CONNACK_TIMEOUT_S):
            return await self.connack

    def abandon(self) -> None:
        """Give this connection up: late socket events from the connect thread close it."""
        self.abandoned = True
        sock = self.client.socket()
        if sock is not None:
            self._unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while a connect was in flight
            self.loop.call_soon_threadsafe(fn, *args)

    # -- socket registration (the paho <-> asyncio seam) ---------------------------------------
    def _on_socket_open(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        # Small, rare messages: Nagle's algorithm would only hold a report back for an ACK.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._threadsafe(self._register, sock)

    def _register(self, sock: Any) -> None:
        if self.abandoned:
            with contextlib.suppress(OSError):
                sock.close()
            return
        self.loop.add_reader(sock, self._on_readable)

    def _on_readable(self) -> None:
        self.client.loop_read()
        sock = self.client.socket()
        # TLS may hold decrypted records the selector cannot see; drain them now. (An SSLSocket
        # has `pending`, a plain socket has not. Keeping `ssl` out of an agent on mqtt:// would
        # save ~1.3 MiB, but paho 2.2 is not safe without it: its `_sock_recv` catches
        # `ssl.SSLWantReadError` even on plain sockets, measured as an AttributeError.)
        while (pending := getattr(sock, "pending", None)) is not None and pending():
            self.client.loop_read()
            sock = self.client.socket()

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._unregister(sock)

    def _unregister(self, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)

    def _on_register_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._threadsafe(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if not self.abandoned and sock.fileno() >= 0:
            self.loop.add_writer(sock, self.client.loop_write)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    # -- paho callbacks (all on the loop thread) -----------------------------------------------
    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionLostError(str(reason)))
        if not self.lost.done():
            self.lost.set_result(str(reason))
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(ConnectionLostError(str(reason)))

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, _reason: ReasonCode, _props: Any
    ) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(None)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.warning(
                "broker refused a subscription (%s): check the broker's access rules",
                ", ".join(str(r) for r in refused),
                extra={"device": self.endpoint.username, "session": self.session},
            )
            self.subscribe_refused.set()

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        """Queue a publish on this connection; its mid, or None when the link is down."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    async def publish_acked(self, topic: str, payload: bytes) -> None:
        """Publish retained at QoS 1 and wait for the PUBACK (callers bound the wait)."""
        mid = self.publish(topic, payload, qos=1, retain=True)
        if mid is None:
            raise ConnectionLostError("not connected")
        ack = self._acks[mid] = self.loop.create_future()
        await ack


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
