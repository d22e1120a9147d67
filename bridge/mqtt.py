"""The bridge's MQTT link: a thin paho-mqtt 2.x shell driven by the asyncio loop.

One paho client (user `bridge`, a client id that is no device name, clean session), run without
paho's thread: the socket is registered with the event loop (`add_reader`/`add_writer` calling
`loop_read`/`loop_write`) and a keep-alive task calls `loop_misc` every second, so every paho
callback runs on the loop thread and messages reach the handler with no hand-off. Only the
blocking TCP/TLS connect (paho's `reconnect`) runs in a worker thread, before any socket callback
is installed, so nothing touches the client concurrently.

Per connection (each with a new `session`: a random boot id plus a counter):
1. CONNECT with a retained will `bridge/status {"state":"offline","session":S}`; on CONNACK a
   retained birth `{"state":"online","session":S}`. A refused login is fatal (`MqttError`, the
   CLI exits 1 naming `--password-file`); an unreachable broker is retried with exponential
   back-off and jitter.
2. Subscribe to `devices/+/{status,heartbeat,report,desired}`; a refused subscription reconnects
   (a NATS cluster refuses for a few seconds while JetStream re-elects after a node died) and is
   fatal only on `refusals_fatal` connections in a row (the broker's ACL lacks the bridge role).
3. Prime: publish an empty non-retained message on this connection's sync marker topic; the
   brokers deliver one connection's messages in order, so when it comes back the retained
   replay is complete. As a fallback (a broker that drops the marker), and against brokers that
   replay retained messages concurrently, priming also waits until no retained message arrived
   for `quiet` seconds. Then the retained documents the handler expected and did not get
   (`handler.to_reread()`, see `replaying`: a broker that dropped part of the replay, or lost its
   retained store) are re-read by exact-topic subscriptions, one batch at a time, each settled
   the same way and unsubscribed. Then `handler.on_primed()`.
4. On loss: `handler.on_lost()`, wait `reconnect_min` (`runtime.backoff`, equal jitter: replicas
   and restarts do not reconnect in lockstep), reconnect, and start over (the handler reconciles from the replay:
   retained messages carry `retained=True`). Unacknowledged QoS 1 messages are dropped before
   reconnecting, never re-sent: the handler re-plans every retained document from the replay, and
   a message the broker refused (it disconnected us) would otherwise be re-sent on every
   reconnect. A loss at any step (before CONNACK, before the SUBACK future exists, while priming)
   fails the waiters and ends the connection, so nothing waits forever.

`down_since` is the monotonic time since which the link has not been primed (None while primed):
the service's `/healthz` fails when it is older than its bound.

While primed, a probe (QoS 0, empty) goes to the same marker topic every `probe_interval`; the
time its echo last came back (`last_echo`) is what `vouched()` reports, and a link with no echo
for `probe_timeout` is ended and reconnected (a silent partition that TCP and the MQTT keepalive
would notice only after a minute).

Reads are batched: the socket is read 64 KiB at a time (`buffering`), and one readable event parses
up to `READ_BATCH` packets from that buffer, then yields to the loop and goes on while bytes are
buffered, so a burst of heartbeats costs one system call and one selector wake-up per batch
rather than several per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from devicefabric.bridge.buffering import BufferedClient
from devicefabric.bridge.errors import MqttError
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.settings import BrokerURL
from devicefabric.config.topics import DeviceTopic, Topics
from devicefabric.config.wire import BridgeStatus, encode
from devicefabric.runtime.backoff import Backoff

log = logging.getLogger("devicefabric.bridge.mqtt")

READ_BATCH: Final = 256
_REFUSED_LOGIN: Final = frozenset({4, 5, 0x86, 0x87})


class LinkHandler(Protocol):
    """What the link tells the service (all called on the event loop thread)."""

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None: ...

    def on_connected(self) -> None: ...

    async def to_reread(self) -> list[list[str]]:
        """Exact topics whose retained documents the replay should have brought and did not,
        in batches (`replaying`); called once the wildcard replay is over."""
        ...

    def on_primed(self) -> None: ...

    def on_lost(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkSettings:
    broker: BrokerURL
    password: str
    client_id: str
    topics: Topics
    tls_ca: Path | None = None
    keepalive: int = 30  # seconds; the broker fires our will after 1.5x this without traffic
    connect_timeout: float = 10.0  # seconds for TCP + TLS + CONNACK
    reconnect_min: float = 0.5  # first reconnect delay (s), doubled per failure...
    reconnect_max: float = 30.0  # ...up to this
    marker_timeout: float = 3.0  # s to wait for the sync marker before relying on quiet alone
    quiet: float = 0.1  # s without a retained message that ends the replay
    prime_max: float = 15.0  # s: priming never waits longer than this
    refusals_fatal: int = 3  # refused subscriptions on this many connections in a row: fatal
    probe_interval: float = 1.0  # s between probes on the sync marker topic while primed...
    probe_timeout: float = 10.0  # ...and without any echo for this long the link is dead


class MqttLink:
    """See the module doc. `run()` blocks until cancelled, then says offline and disconnects."""

    def __init__(self, settings: LinkSettings, handler: LinkHandler) -> None:
        self.settings = settings
        self.handler = handler
        self.connected = False
        self.primed = False
        self.session = ""
        self.down_since: float | None = time.monotonic()  # not primed since (None: primed)
        self._boot = secrets.token_hex(4)
        self._counter = 0
        self.last_echo: float | None = None  # monotonic time our own marker last came back
        self._last_retained = 0.0
        self._marker_topic = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[int] | None = None
        self._suback: asyncio.Future[list[int]] | None = None
        self._marker = asyncio.Event()
        self._lost = asyncio.Event()
        self._fd: int | None = None
        self._fatal: MqttError | None = None
        self._refusals = 0  # connections in a row whose subscriptions were refused
        self._acked = asyncio.Event()  # the offline status was acknowledged (or we lost the link)
        self._offline_mid = -1
        self._connecting: asyncio.Future[Any] | None = None
        self._client: BufferedClient = self._make_client()

    # -- public ----------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, retain: bool, qos: int = 1) -> bool:
        """Hand a message to paho; False when not connected (the caller re-plans on reconnect)."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_birth(self) -> bool:
        """The retained `bridge/status` online document of this connection's session."""
        birth = encode(BridgeStatus(state="online", session=self.session))
        return self.publish(self.settings.topics.bridge_status(), birth, retain=True)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Equal jitter: each wait is in [ceiling/2, ceiling], so replicas and restarts do not
        # reconnect in lockstep and no retry comes sooner than half the current step.
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max, jitter="equal")
        try:
            while True:
                try:
                    await self._connect()
                except (OSError, TimeoutError) as exc:
                    wait = backoff.next_delay()
                    log.warning(
                        "cannot reach the broker at %s (%s); retrying in %.1fs",
                        self.settings.broker,
                        exc or type(exc).__name__,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    continue
                backoff.reset()
                await self._serve()  # returns when the connection is lost
                self.connected = self.primed = False
                self.down_since = time.monotonic()
                self._detach()
                self.handler.on_lost()
                wait = backoff.next_delay()
                log.warning(
                    "lost the broker connection; reconnecting in %.1fs",
                    wait,
                    extra={"session": self.session},
                )
                await asyncio.sleep(wait)
        finally:
            await self._close()

    # -- connection ------------------------------------------------------------------------------
    def _make_client(self) -> BufferedClient:
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(BRIDGE_USER, self.settings.password)
        if self.settings.broker.tls:
            ca = str(self.settings.tls_ca) if self.settings.tls_ca is not None else None
            client.tls_set(ca_certs=ca)
        client.connect_timeout = self.settings.connect_timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_qos0_publish = self._on_qos0
        client.on_publish = self._on_publish
        client.connect_async(
            self.settings.broker.host, self.settings.broker.port, self.settings.keepalive
        )
        return client

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._counter += 1
        self.session = f"{self._boot}.{self._counter}"
        self._marker_topic = self.settings.topics.sync_marker(self.session)
        self._marker.clear()
        self.last_echo = None
        self._lost.clear()
        will = encode(BridgeStatus(state="offline", session=self.session))
        self._client.will_set(self.settings.topics.bridge_status(), will, qos=1, retain=True)
        self._connack = loop.create_future()
        self._suback = loop.create_future()  # exists before CONNACK: a loss from then on fails it
        # Never re-send what the last connection left unacknowledged (see the module doc).
        self._client.forget_buffer()  # nothing of the last connection is parsed on this one
        dropped = self._client.drop_out_messages()
        if dropped:
            log.warning("dropped %d unacknowledged messages of the lost connection", len(dropped))
        # Blocking TCP/TLS connect and CONNECT write (bounded by paho's connect_timeout), with no
        # socket callback installed yet, so the worker thread is the only one touching paho.
        # Shielded: if we are cancelled meanwhile, `_close` waits for the thread, then closes.
        self._connecting = loop.run_in_executor(None, self._client.reconnect)
        await asyncio.shield(self._connecting)
        try:
            self._attach()
            async with asyncio.timeout(self.settings.connect_timeout):
                code = await self._connack
        except BaseException:
            self._drop()
            raise
        if code in _REFUSED_LOGIN:
            raise MqttError(
                f"the broker at {self.settings.broker} refused the bridge's login "
                f"(CONNACK {code}): check --password-file"
            )
        if code != 0:
            self._drop()
            raise OSError(f"CONNACK refused with code {code}")
        self.connected = True
        log.info(
            "connected to the broker at %s as %s",
            self.settings.broker,
            self.settings.client_id,
            extra={"session": self.session},
        )
        self.publish_birth()
        self.handler.on_connected()

    async def _serve(self) -> None:
        self._fatal = None
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keepalive(), name="mqtt-keepalive")
            tg.create_task(self._prime(), name="mqtt-prime")
        if self._fatal is not None:
            raise self._fatal

    def vouched(self, now: float) -> float:
        """Up to when the link is known to have worked: the last echo of our own probe.

        The sweep times devices out only up to this moment, so a silent link (a partition the
        TCP connection has not noticed yet) never makes the bridge blame the devices for
        heartbeats it could not receive. A broker that never echoes the marker vouches nothing
        and the sweep uses `now`, as before.
        """
        return now if self.last_echo is None else min(now, self.last_echo)

    async def _keepalive(self) -> None:
        next_probe = 0.0
        while not self._lost.is_set():
            self._client.loop_misc()
            now = time.monotonic()
            if self.primed and now >= next_probe:
                next_probe = now + self.settings.probe_interval
                self._probe(now)
            await self._wait(self._lost, min(1.0, self.settings.probe_interval))

    def _probe(self, now: float) -> None:
        """Publish a probe on the marker topic; a link silent past `probe_timeout` is ended."""
        echo = self.last_echo
        if echo is not None and now - echo > self.settings.probe_timeout:
            log.warning(
                "no echo of our own probe for %.0fs: the broker link is silent; reconnecting",
                now - echo,
                extra={"session": self.session},
            )
            self._client.disconnect()
            self._lost.set()
            return
        self.publish(self._marker_topic, b"", retain=False, qos=0)

    async def _prime(self) -> None:
        if self._suback is None or self._lost.is_set():
            return  # lost between CONNACK and here: `_serve` ends with the keep-alive task
        topics = self.settings.topics
        filters = [
            (topics.all_devices(DeviceTopic.STATUS), 1),
            (topics.all_devices(DeviceTopic.REPORT), 1),
            (topics.all_devices(DeviceTopic.DESIRED), 1),
            (topics.all_devices(DeviceTopic.HEARTBEAT), 0),
            (topics.all_devices(DeviceTopic.LOGS_REPLY), 1),  # answers to our logs requests
        ]
        rc, _mid = self._client.subscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost.set()  # not connected any more: end `_serve` and reconnect
            return
        try:
            codes = await self._suback
        except OSError:
            return  # lost before the SUBACK
        if any(code >= 0x80 for code in codes):
            self._refused([f for f, _ in filters])
            return
        self._refusals = 0
        deadline = time.monotonic() + self.settings.prime_max
        if not await self._settle(deadline, "the replay"):
            return
        batches = await self.handler.to_reread()
        if batches and not await self._reread(batches, time.monotonic() + self.settings.prime_max):
            return
        self.primed = True
        self.down_since = None
        log.info("subscribed and retained state read back", extra={"session": self.session})
        self.handler.on_primed()

    async def _settle(self, deadline: float, what: str) -> bool:
        """Wait until what was sent before now has been delivered: our marker comes back (the
        brokers deliver one connection's messages in order), then no retained message for
        `quiet` s (brokers that replay concurrently). False when the link was lost."""
        self._marker.clear()
        self._last_retained = time.monotonic()
        self.publish(self._marker_topic, b"", retain=False)
        if not await self._wait(self._marker, self.settings.marker_timeout):
            if self._lost.is_set():
                return False
            log.warning(
                "the sync marker did not come back after %s; relying on a quiet period", what
            )
        while (idle := time.monotonic() - self._last_retained) < self.settings.quiet:
            if time.monotonic() > deadline or await self._wait(
                self._lost, self.settings.quiet - idle
            ):
                break
        return not self._lost.is_set()

    async def _reread(self, batches: list[list[str]], deadline: float) -> bool:
        """Subscribe to each batch of exact topics (the broker sends their retained messages),
        settle, unsubscribe. Stops early (what is left counts as missing) on a refusal or past
        `deadline`; False when the link was lost."""
        loop = asyncio.get_running_loop()
        for number, batch in enumerate(batches, 1):
            if time.monotonic() > deadline:
                log.warning("re-reading retained documents took too long; %d batches left",
                            len(batches) - number + 1)  # fmt: skip
                return True
            self._suback = loop.create_future()
            rc, _mid = self._client.subscribe([(topic, 0) for topic in batch])  # see `replaying`
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost.set()
                return False
            try:
                codes = await self._suback
            except OSError:
                return False
            if any(code >= 0x80 for code in codes):
                log.warning("the broker refused re-reading %d retained documents", len(batch))
                self._client.unsubscribe(batch)
                return True
            if not await self._settle(deadline, "re-reading retained documents"):
                return False
            self._client.unsubscribe(batch)
        return True

    def _refused(self, filters: list[str]) -> None:
        """Subscriptions refused: reconnect, or give up after `refusals_fatal` in a row."""
        self._refusals += 1
        if self._refusals >= self.settings.refusals_fatal:
            self._fatal = MqttError(
                f"the broker at {self.settings.broker} refused the bridge's subscriptions "
                f"{filters} on {self._refusals} connections in a row: "
                "its ACL lacks the `bridge` role"
            )
        else:
            log.warning(
                "the broker refused the bridge's subscriptions (%d of %d before giving up); "
                "reconnecting",
                self._refusals,
                self.settings.refusals_fatal,
                extra={"session": self.session},
            )
        self._client.disconnect()

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def _close(self) -> None:
        """Say offline and disconnect (bounded); always release the socket."""
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.connect_timeout):
                    await connecting
        if self.connected:
            try:
                async with asyncio.timeout(2.0):
                    offline = encode(BridgeStatus(state="offline", session=self.session))
                    self._acked.clear()
                    info = self._client.publish(
                        self.settings.topics.bridge_status(), offline, qos=1, retain=True
                    )
                    self._offline_mid = info.mid
                    await self._acked.wait()
                    self._client.disconnect()
                    await self._lost.wait()
            except TimeoutError:
                log.warning("the broker did not acknowledge the bridge's offline status in time")
        self._drop()

    def _drop(self) -> None:
        """Forget the connection: no callbacks, no reader, the socket closed."""
        self.connected = self.primed = False
        self._detach()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    # -- socket plumbing (loop thread) -----------------------------------------------------------
    def _attach(self) -> None:
        sock = self._client.socket()
        if not isinstance(sock, socket.socket) or self._loop is None:
            raise OSError("paho has no socket after connecting")
        # Desired documents are small and latency-bound: no Nagle wait for a delayed ACK (~40 ms).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        self._client.on_socket_close = self._socket_close
        self._client.on_socket_register_write = self._register_write
        self._client.on_socket_unregister_write = self._unregister_write
        if self._client.want_write():
            self._loop.add_writer(self._fd, self._writable)

    def _detach(self) -> None:
        self._client.on_socket_close = None
        self._client.on_socket_register_write = None
        self._client.on_socket_unregister_write = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None

    def _readable(self) -> None:
        client = self._client
        for _ in range(READ_BATCH):
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if not client.buffered():
                return  # the selector reports whatever arrives next
        if self._loop is not None and self._fd is not None:  # more is buffered: after the others
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self._client.loop_write()

    def _socket_close(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        self._detach()

    def _register_write(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.add_writer(self._fd, self._writable)

    def _unregister_write(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)

    # -- paho callbacks (loop thread) ------------------------------------------------------------
    def _on_connect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, code: Any, _props: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(int(getattr(code, "value", code)))

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, _code: Any, _props: Any
    ) -> None:
        self.connected = False
        self._lost.set()
        self._acked.set()
        for waiter in (self._connack, self._suback):
            if waiter is not None and not waiter.done():
                waiter.set_exception(OSError("connection closed"))
                waiter.exception()  # retrieved: a waiter that never awaits it is fine

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, codes: list[Any], _props: Any
    ) -> None:
        if self._suback is not None and not self._suback.done():
            self._suback.set_result([int(getattr(c, "value", c)) for c in codes])

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _code: Any, _props: Any
    ) -> None:
        if mid == self._offline_mid:
            self._acked.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        payload = msg.payload
        self._deliver(topic, payload if isinstance(payload, bytes) else bytes(payload), msg.retain)

    def _on_qos0(self, topic: bytes, payload: bytes, retained: bool) -> None:
        """A QoS 0 PUBLISH (heartbeats) without paho's message object (`buffering`)."""
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            return
        self._deliver(text, payload, retained)

    def _deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            self._last_retained = time.monotonic()
        if topic == self._marker_topic:
            self._marker.set()
            self.last_echo = time.monotonic()
            return
        try:
            self.handler.on_message(topic, payload, retained)
        except Exception:  # the handler never raises by contract; paho must not see it anyway
            log.exception("message handler failed", extra={"topic": topic})
