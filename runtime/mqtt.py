"""One MQTT connection, paho's side: the client as the fabric sets it up, its socket on a loop.

Every program's MQTT goes through here (the asyncio shell around it is `runtime.mqttloop`). No
asyncio in this module: a `Channel` drives paho-mqtt 2.x without paho's network thread through a
`Reactor`, the few calls of an event loop it needs (watch a descriptor for reading or writing,
call soon, call from another thread), so a loop other than asyncio's can drive it too.

- The client: callback API version 2, MQTT 3.1.1, clean session, paho's own reconnect off, the
  user name and password, a retained QoS 1 will, TLS when the broker URL says so (`tls_ca` or the
  system's CAs), paho's `connect_timeout` and, when set, `max_inflight`.
- Connecting: the blocking TCP connect and TLS handshake (paho's `connect`, bounded by
  `connect_timeout`) run in a short-lived daemon thread, with no socket callback installed yet, so
  paho writes the CONNECT from that thread and nothing else touches the client meanwhile. The
  thread then hands over to the loop thread (`call_threadsafe`), which registers the socket, or
  closes it when the channel was abandoned meanwhile. From then on every paho callback runs on the
  loop thread, and no lock is taken here.
- Reads: one readable event reads up to `READ_BATCH` packets, then yields to the loop and goes on
  while bytes are buffered that the selector cannot report: decrypted TLS records, or with
  `buffered=True` the read buffer of `mqttbuffer.BufferedClient` (one `recv` per many packets, and
  QoS 0 PUBLISHes delivered without paho's message object). Every message reaches `on_message`
  as `(topic, payload, retained)`; a topic that is not UTF-8 is dropped.
- Writes: paho's socket callbacks say when it has something to write; the socket is watched for
  writing only then.
- Sockets get TCP_NODELAY: fabric messages are small and latency-bound, and Nagle's algorithm
  would hold one back until the previous one is acknowledged (40 ms delayed ACKs on Linux).

A `Channel` is used once: connect, run until lost, never reconnect. A new connection is a new
channel with a new paho client, so nothing queued for an old one (an unacknowledged publish) is
ever sent on a new one, and no byte read on an old socket is parsed as part of a new one. The
owner calls `loop_misc` on a timer (keepalive) and overrides the hooks (`handshaken`,
`connected`, `closed`, `subscribed`, `published`) to learn what happened.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.config.settings import BrokerURL

C = TypeVar("C", bound=paho.Client)

READ_BATCH: Final = 256  # packets read per readable event before the loop gets a turn
# CONNACK refusals that retrying cannot fix (MQTT 3.1.1 codes 1, 2, 4, 5 as paho reports them):
# unsupported protocol version, client identifier not valid, bad user name or password, not
# authorized.
PERMANENT_REFUSALS: Final = frozenset({0x84, 0x85, 0x86, 0x87})


class Reactor(Protocol):
    """What a `Channel` needs of an event loop (all called on the loop thread but the last)."""

    def watch_read(self, fd: int, callback: Callable[[], None]) -> None: ...

    def watch_write(self, fd: int, callback: Callable[[], None]) -> None: ...

    def unwatch_write(self, fd: int) -> None: ...

    def unwatch(self, fd: int) -> None:
        """Neither read nor write `fd` any more."""
        ...

    def call_soon(self, callback: Callable[[], None]) -> None: ...

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        """From another thread: run `callback` on the loop thread (nothing if the loop ended)."""
        ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect."""

    broker: BrokerURL
    client_id: str
    username: str
    password: str
    keepalive: int  # seconds; the broker fires the will after 1.5x this without traffic
    tls_ca: Path | None = None  # None: the system's CAs (with an mqtts:// broker)
    connect_timeout: float = 10.0  # seconds for TCP + TLS, and again for the CONNACK
    max_inflight: int | None = None  # QoS 1 messages awaiting their PUBACK (None: paho's 20)


@dataclass(frozen=True, slots=True)
class Will:
    """A retained QoS 1 message: the will set before connecting, or a last word on closing."""

    topic: str
    payload: bytes


def code_of(reason: ReasonCode | int) -> int:
    """The numeric reason code (paho reports MQTT 3.1.1 codes as their MQTT 5 equivalents)."""
    return reason if isinstance(reason, int) else int(reason.value)


def make_client(endpoint: Endpoint, will: Will | None, cls: type[C]) -> C:
    """A `cls` client set up as the module doc says, not connected."""
    client = cls(
        CallbackAPIVersion.VERSION2,
        client_id=endpoint.client_id,
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )
    client.username_pw_set(endpoint.username, endpoint.password)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=True)
    if endpoint.broker.tls:
        client.tls_set(ca_certs=str(endpoint.tls_ca) if endpoint.tls_ca else None)
    client.connect_timeout = endpoint.connect_timeout
    if endpoint.max_inflight is not None:
        client.max_inflight_messages_set(endpoint.max_inflight)
    return client


class Channel:
    """One paho client, one socket, driven by a `Reactor` (see the module doc)."""

    def __init__(
        self, endpoint: Endpoint, will: Will | None, reactor: Reactor, *, buffered: bool = False
    ) -> None:
        self.endpoint = endpoint
        self.abandoned = False
        self.on_message: Callable[[str, bytes, bool], None] = _ignore
        self._reactor = reactor
        self._fd: int | None = None
        self._more: Callable[[], bool] = self._tls_pending
        client: paho.Client
        if buffered:
            # The bridge's read path; the agent never loads it.
            from devicefabric.runtime.mqttbuffer import BufferedClient  # noqa: PLC0415

            fast = make_client(endpoint, will, BufferedClient)
            fast.on_qos0_publish = self._on_qos0
            self._more = fast.buffered
            client = fast
        else:
            client = make_client(endpoint, will, paho.Client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    # -- hooks (loop thread): what the owner learns ----------------------------------------------
    def handshaken(self, error: BaseException | None) -> None:
        """The connect thread ended: the CONNECT is on its way (None), or connecting failed."""

    def connected(self, reason: ReasonCode) -> None:
        """The CONNACK arrived (a failure code is a refusal)."""

    def closed(self, reason: str) -> None:
        """The connection is gone (whoever closed it); called once."""

    def subscribed(self, mid: int, reasons: list[ReasonCode]) -> None:
        """The SUBACK of subscription `mid`, one reason per filter."""

    def published(self, mid: int) -> None:
        """Publish `mid` is done: acknowledged (QoS 1) or written (QoS 0)."""

    # -- commands (loop thread) ------------------------------------------------------------------
    def start(self) -> None:
        """Connect in a daemon thread; `handshaken` tells how it went."""
        threading.Thread(target=self._connect, name="mqtt-connect", daemon=True).start()

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        """Queue a message; its mid, or None when paho refused it (the link is down)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def subscribe(self, filters: list[tuple[str, int]]) -> int | None:
        """Queue a SUBSCRIBE of `(filter, qos)` pairs; its mid, or None when the link is down."""
        rc, mid = self.client.subscribe(filters)
        return mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None else None

    def unsubscribe(self, topics: list[str]) -> None:
        self.client.unsubscribe(topics)

    def loop_misc(self) -> None:
        """paho's timer work: PINGREQ when idle, and noticing a broker that stopped answering."""
        self.client.loop_misc()

    def disconnect(self) -> None:
        """Send DISCONNECT (the broker discards the will); `closed` follows."""
        self.client.disconnect()

    def abandon(self) -> None:
        """Give this channel up: stop watching and close the socket (a connect still in flight
        closes its socket when it ends). Idempotent."""
        self.abandoned = True
        self._detach()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.close()

    # -- the connect thread and the hand-over ----------------------------------------------------
    def _connect(self) -> None:
        broker = self.endpoint.broker
        error: BaseException | None = None
        try:
            self.client.connect(broker.host, broker.port, self.endpoint.keepalive)
        except BaseException as exc:  # handed to the loop thread, raised there
            error = exc
        self._reactor.call_threadsafe(lambda: self._hand_over(error))

    def _hand_over(self, error: BaseException | None) -> None:
        if error is None and self.abandoned:
            self.abandon()  # the socket the thread opened after we gave up
            return
        if error is None:
            try:
                self._attach()
            except OSError as exc:
                error = exc
        self.handshaken(error)

    # -- the socket on the loop ------------------------------------------------------------------
    def _attach(self) -> None:
        sock = self.client.socket()
        if not isinstance(sock, socket.socket):
            raise OSError("paho has no socket after connecting")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        self._reactor.watch_read(self._fd, self._readable)
        self.client.on_socket_close = self._socket_close
        self.client.on_socket_register_write = self._register_write
        self.client.on_socket_unregister_write = self._unregister_write
        if self.client.want_write():
            self._reactor.watch_write(self._fd, self._writable)

    def _detach(self) -> None:
        self.client.on_socket_close = None
        self.client.on_socket_register_write = None
        self.client.on_socket_unregister_write = None
        fd, self._fd = self._fd, None
        if fd is not None:
            self._reactor.unwatch(fd)

    def _readable(self) -> None:
        client = self.client
        for _ in range(READ_BATCH):
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if not self._more():
                return  # the selector reports whatever arrives next
        if self._fd is not None:  # more is buffered: after the loop's other work
            self._reactor.call_soon(self._readable)

    def _tls_pending(self) -> bool:
        # An SSLSocket may hold decrypted records the selector cannot see; a plain one has no
        # `pending`. (Keeping `ssl` out of an agent on mqtt:// would save ~1.3 MiB, but paho 2.2
        # is not safe without it: its `_sock_recv` catches `ssl.SSLWantReadError` even on plain
        # sockets.)
        pending = getattr(self.client.socket(), "pending", None)
        return bool(pending()) if callable(pending) else False

    def _writable(self) -> None:
        self.client.loop_write()

    def _socket_close(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        self._detach()

    def _register_write(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        if self._fd is not None:
            self._reactor.watch_write(self._fd, self._writable)

    def _unregister_write(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        if self._fd is not None:
            self._reactor.unwatch_write(self._fd)

    # -- paho's callbacks (loop thread) ----------------------------------------------------------
    def _on_connect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.connected(reason)

    def _on_disconnect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.closed(str(reason))

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        self.subscribed(mid, reasons)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        self.published(mid)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        payload = msg.payload
        self.on_message(
            topic, payload if isinstance(payload, bytes) else bytes(payload), msg.retain
        )

    def _on_qos0(self, topic: bytes, payload: bytes, retained: bool) -> None:
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            return
        self.on_message(text, payload, retained)


def _ignore(_topic: str, _payload: bytes, _retained: bool) -> None:
    pass
