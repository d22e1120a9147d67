"""The agent's MQTT session: connect, birth, will, heartbeat, reconnect (paho-mqtt 2.x on asyncio).

paho runs inside the event loop, no network thread: its socket is registered with
`loop.add_reader/add_writer` and driven by `loop_read/loop_write`, and `loop_misc` runs on a
timer for keepalive. Only the blocking TCP/TLS connect runs in a short-lived daemon thread, which
hands the socket back through `call_soon_threadsafe`. Every paho callback therefore runs on the
loop thread, and nothing here takes a lock.

One paho `Client` per connection, and one `session` per connection (`<boot id>-<counter>`):

- the will (retained `offline`, reason `lost`, this session) is set before connecting;
- after CONNACK: retained birth (`online`, session, `heartbeat_s`, agent version), then the
  subscription to this device's `desired` and `status`;
- a status message that is not this session's birth (a late will of an older session, or any
  other status) makes the agent republish its birth;
- heartbeats (`{"session","seq"}`, QoS 0, not retained) on their own timer while connected.

A fresh client per connection means nothing paho queued for an old session (an unacknowledged
birth or report) can be replayed after the new session's birth. Refused logins (bad user name or
password, not authorized, client id rejected) raise `LoginRefusedError`; every other failure
reconnects after exponential back-off with full jitter, reset once a connection held for a while.
`close()` publishes the retained `offline` (reason `shutdown`), waits for its PUBACK (bounded)
and disconnects, so the broker discards the will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.agent.backoff import Backoff
from devicefabric.agent.errors import LoginRefusedError
from devicefabric.config.errors import PayloadError
from devicefabric.config.settings import BrokerURL
from devicefabric.config.topics import Topics
from devicefabric.config.wire import (
    Heartbeat,
    StatusOffline,
    StatusOnline,
    decode_status,
    encode,
)

log = logging.getLogger("devicefabric.agent.session")

CONNECT_TIMEOUT_S: Final = 10.0  # TCP + TLS handshake, enforced by paho's socket timeout
CONNACK_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0  # for the PUBACK of the shutdown status
RECONNECT_BASE_S: Final = 0.5
HELD_FOR_RESET_S: Final = 10.0  # a connection that held this long resets the back-off
# CONNACK refusals that retrying cannot fix (MQTT 3.1.1 return codes 1, 2, 4, 5).
PERMANENT_REFUSALS: Final = frozenset(
    {
        "Unsupported protocol version",
        "Client identifier not valid",
        "Bad user name or password",
        "Not authorized",
    }
)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    device: str
    broker: BrokerURL
    password: str
    heartbeat_s: int
    topics: Topics
    agent_version: str
    max_reconnect_backoff: float = 30.0
    tls_ca: Path | None = None

    @property
    def keepalive(self) -> int:
        """MQTT keepalive: twice the heartbeat, so a half-open link is noticed in ~3 heartbeats."""
        return max(5, min(2 * self.heartbeat_s, 65535))


class ConnectionLostError(Exception):
    """The connection closed before it was established (internal)."""


class _Connection:
    """One paho client, one socket, one session; lives from connect to loss."""

    def __init__(self, settings: SessionSettings, session: str) -> None:
        self.settings = settings
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.lost: asyncio.Future[str] = self.loop.create_future()
        self.abandoned = False
        self._acks: dict[int, asyncio.Future[None]] = {}
        topics = settings.topics
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.device,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.username_pw_set(settings.device, settings.password)
        will = StatusOffline(state="offline", session=session, reason="lost")
        client.will_set(topics.status(settings.device), encode(will), qos=1, retain=True)
        if settings.broker.tls:
            client.tls_set(ca_certs=str(settings.tls_ca) if settings.tls_ca else None)
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
        broker = self.settings.broker
        done: asyncio.Future[None] = self.loop.create_future()

        def connect() -> None:
            try:
                self.client.connect(broker.host, broker.port, self.settings.keepalive)
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
        # TLS may hold decrypted records the selector cannot see; drain them now.
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
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
                extra={"device": self.settings.device, "session": self.session},
            )

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


class Session:
    """The agent's MQTT presence; `run()` blocks until cancelled or a login is refused."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        on_desired: Callable[[bytes], None],
        on_up: Callable[[], None],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._on_desired = on_desired
        self._on_up = on_up
        self._rand = rand
        self._boot = secrets.token_hex(4)
        self._counter = 0
        self._conn: _Connection | None = None
        self._closing = False
        topics, device = settings.topics, settings.device
        self._t_status = topics.status(device)
        self._t_desired = topics.desired(device)
        self._t_heartbeat = topics.heartbeat(device)
        self._t_report = topics.report(device)
        self._failing = False

    @property
    def live(self) -> str | None:
        """The session id while connected (birth published), else None."""
        conn = self._conn
        return conn.session if conn is not None and not conn.lost.done() else None

    def _extra(self, **more: Any) -> dict[str, Any]:
        return {"device": self._settings.device, "session": self.live, **more}

    def publish_report(self, payload: bytes) -> bool:
        """Publish a report (retained, QoS 1) on the live connection; False when there is none."""
        conn = self._conn
        if conn is None or conn.lost.done():
            return False
        return conn.publish(self._t_report, payload, qos=1, retain=True) is not None

    # -- the connection loop -------------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff(
            base=min(RECONNECT_BASE_S, self._settings.max_reconnect_backoff),
            cap=self._settings.max_reconnect_backoff,
            jitter="full",
            rand=self._rand,
        )
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._counter += 1
            conn = _Connection(self._settings, f"{self._boot}-{self._counter}")
            started = loop.time()
            try:
                connected = await self._hold(conn)
            finally:
                self._conn = None
                conn.abandon()
            if self._closing:
                return
            if connected and loop.time() - started >= HELD_FOR_RESET_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.debug("reconnecting in %.2fs", delay, extra=self._extra())
            await asyncio.sleep(delay)

    async def _hold(self, conn: _Connection) -> bool:
        """Connect `conn` and keep it until it is lost; True when it was established."""
        broker = self._settings.broker
        try:
            reason = await conn.open()
        except (OSError, TimeoutError, ConnectionLostError) as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            why = str(exc) or type(exc).__name__
            log.log(level, "cannot connect to %s: %s (retrying)", broker, why, extra=self._extra())
            self._failing = True
            return False
        if reason.is_failure:
            if str(reason) in PERMANENT_REFUSALS:
                raise LoginRefusedError(self._settings.device, str(broker), str(reason))
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "broker %s refused: %s (retrying)", broker, reason, extra=self._extra())
            self._failing = True
            return False
        self._failing = False
        self._birth(conn)
        conn.client.on_message = self._on_message
        conn.client.subscribe([(self._t_desired, 1), (self._t_status, 1)])
        self._conn = conn
        log.info("connected to %s", broker, extra=self._extra(reason="connected"))
        self._on_up()
        async with asyncio.TaskGroup() as tg:
            heartbeats = tg.create_task(self._heartbeats(conn), name="heartbeat")
            keepalive = tg.create_task(self._keepalive(conn), name="mqtt keepalive")
            why = await conn.lost
            heartbeats.cancel()
            keepalive.cancel()
        if not self._closing:
            lost = {"device": self._settings.device, "session": conn.session, "reason": "lost"}
            log.warning("connection lost: %s", why, extra=lost)
        return True

    def _birth(self, conn: _Connection) -> None:
        birth = StatusOnline(
            state="online",
            session=conn.session,
            heartbeat_s=self._settings.heartbeat_s,
            agent=self._settings.agent_version,
        )
        conn.publish(self._t_status, encode(birth), qos=1, retain=True)

    async def _heartbeats(self, conn: _Connection) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            seq += 1
            beat = encode(Heartbeat(session=conn.session, seq=seq))
            conn.publish(self._t_heartbeat, beat, qos=0, retain=False)
            log.debug("heartbeat %d", seq, extra=self._extra())

    async def _keepalive(self, conn: _Connection) -> None:
        interval = self._settings.keepalive / 4
        while True:
            await asyncio.sleep(interval)
            conn.client.loop_misc()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        conn = self._conn
        if conn is None:
            return
        if msg.topic == self._t_desired:
            self._on_desired(bytes(msg.payload))
        elif msg.topic == self._t_status:
            self._check_status(conn, bytes(msg.payload))

    def _check_status(self, conn: _Connection, payload: bytes) -> None:
        try:
            status = decode_status(payload)
        except PayloadError as exc:
            seen = f"an invalid status ({exc.reason})"
        else:
            if isinstance(status, StatusOnline) and status.session == conn.session:
                return
            seen = f"{status.state} for session {status.session}"
        log.info("status topic says %s: republishing birth", seen, extra=self._extra())
        self._birth(conn)

    # -- shutdown ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Publish the retained clean `offline` and disconnect; bounded, never raises."""
        self._closing = True
        conn = self._conn
        if conn is None or conn.lost.done():
            return
        offline = StatusOffline(state="offline", session=conn.session, reason="shutdown")
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await conn.publish_acked(self._t_status, encode(offline))
        except (TimeoutError, ConnectionLostError) as exc:
            log.warning("clean offline not acknowledged: %s", exc or "timeout", extra=self._extra())
        conn.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(conn.lost)
        log.info("disconnected", extra=self._extra(reason="shutdown"))
