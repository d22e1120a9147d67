"""The bridge's MQTT link: the fabric's sync protocol on top of `runtime.mqttloop`.

One connection at a time (`runtime.mqttloop.Connection`: user `bridge`, a client id that is no
device name, clean session, buffered reads), driven by the asyncio loop: every callback runs on
the loop thread and messages reach the handler with no hand-off. A keep-alive task calls
`loop_misc` every second.

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
   and restarts do not reconnect in lockstep), reconnect, and start over (the handler reconciles
   from the replay: retained messages carry `retained=True`). Unacknowledged QoS 1 messages are
   never re-sent (each connection is a new client): the handler re-plans every retained document
   from the replay, and a message the broker refused (it disconnected us) would otherwise be
   re-sent on every reconnect. A loss at any step (before CONNACK, before a SUBACK, while
   priming) fails the waiters and ends the connection, so nothing waits forever.

`down_since` is the monotonic time since which the link has not been primed (None while primed):
the service's `/healthz` fails when it is older than its bound.

While primed, a probe (QoS 0, empty) goes to the same marker topic every `probe_interval`; the
time its echo last came back (`last_echo`) is what `vouched()` reports, and a link with no echo
for `probe_timeout` is ended and reconnected (a silent partition that TCP and the MQTT keepalive
would notice only after a minute).

Reads are batched: the socket is read 64 KiB at a time (`runtime.mqttbuffer`), and one readable
event parses up to `runtime.mqtt.READ_BATCH` packets from that buffer, so a burst of heartbeats costs one
system call and one selector wake-up per batch rather than several per message.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devicefabric.bridge.errors import MqttError
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.settings import BrokerURL
from devicefabric.config.topics import DeviceTopic, Topics
from devicefabric.config.wire import BridgeStatus, encode
from devicefabric.runtime.backoff import Backoff
from devicefabric.runtime.mqtt import PERMANENT_REFUSALS, Endpoint, Will, code_of
from devicefabric.runtime.mqttloop import Connection, ConnectionLostError, reconnecting

log = logging.getLogger("devicefabric.bridge.mqtt")


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

    def endpoint(self) -> Endpoint:
        return Endpoint(
            broker=self.broker,
            client_id=self.client_id,
            username=BRIDGE_USER,
            password=self.password,
            keepalive=self.keepalive,
            tls_ca=self.tls_ca,
            connect_timeout=self.connect_timeout,
        )


class MqttLink:
    """See the module doc. `run()` blocks until cancelled, then says offline and disconnects."""

    def __init__(self, settings: LinkSettings, handler: LinkHandler) -> None:
        self.settings = settings
        self.handler = handler
        self.connected = False
        self.primed = False
        self.session = ""
        self.down_since: float | None = time.monotonic()  # not primed since (None: primed)
        self.last_echo: float | None = None  # monotonic time our own marker last came back
        self.connection: Connection | None = None  # the current one (tests reach its socket)
        self._boot = secrets.token_hex(4)
        self._counter = 0
        self._last_retained = 0.0
        self._marker_topic = ""
        self._marker = asyncio.Event()
        self._lost = asyncio.Event()
        self._fatal: MqttError | None = None
        self._refusals = 0  # connections in a row whose subscriptions were refused
        self._why = ""  # why the last attempt failed, for the retry's log line

    # -- public ----------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, retain: bool, qos: int = 1) -> bool:
        """Hand a message to paho; False when not connected (the caller re-plans on reconnect)."""
        conn = self.connection
        if not self.connected or conn is None:
            return False
        return conn.publish(topic, payload, qos=qos, retain=retain) is not None

    def publish_birth(self) -> bool:
        """The retained `bridge/status` online document of this connection's session."""
        birth = encode(BridgeStatus(state="online", session=self.session))
        return self.publish(self.settings.topics.bridge_status(), birth, retain=True)

    def vouched(self, now: float) -> float:
        """Up to when the link is known to have worked: the last echo of our own probe.

        The sweep times devices out only up to this moment, so a silent link (a partition the
        TCP connection has not noticed yet) never makes the bridge blame the devices for
        heartbeats it could not receive. A broker that never echoes the marker vouches nothing
        and the sweep uses `now`, as before.
        """
        return now if self.last_echo is None else min(now, self.last_echo)

    async def run(self) -> None:
        # Equal jitter: each wait is in [ceiling/2, ceiling], so replicas and restarts do not
        # reconnect in lockstep and no retry comes sooner than half the current step.
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max, jitter="equal")
        try:
            await reconnecting(self._attempt, backoff, retry=self._retrying)
        finally:
            await self._close()

    # -- one connection --------------------------------------------------------------------------
    async def _attempt(self) -> bool:
        """Connect, prime and serve until lost; True when the broker accepted the connection."""
        conn = self._new_connection()
        try:
            await self._connect(conn)
        except (OSError, TimeoutError, ConnectionLostError) as exc:
            self._why = (
                f"cannot reach the broker at {self.settings.broker} ({exc or type(exc).__name__})"
            )
            return False
        await self._serve(conn)  # returns when the connection is lost
        conn.abandon()
        self.connected = self.primed = False
        self.down_since = time.monotonic()
        self.handler.on_lost()
        self._why = "lost the broker connection"
        return True

    def _retrying(self, _established: bool, delay: float) -> None:
        log.warning("%s; reconnecting in %.1fs", self._why, delay, extra={"session": self.session})

    def _new_connection(self) -> Connection:
        self._counter += 1
        self.session = f"{self._boot}.{self._counter}"
        self._marker_topic = self.settings.topics.sync_marker(self.session)
        self._marker.clear()
        self.last_echo = None
        self._lost.clear()
        offline = encode(BridgeStatus(state="offline", session=self.session))
        will = Will(self.settings.topics.bridge_status(), offline)
        conn = Connection(self.settings.endpoint(), will, session=self.session, buffered=True)
        conn.on_message = self._deliver
        conn.lost.add_done_callback(lambda _lost: self._on_lost(conn))
        self.connection = conn
        return conn

    def _on_lost(self, conn: Connection) -> None:
        if conn is self.connection:
            self.connected = False
            self._lost.set()

    async def _connect(self, conn: Connection) -> None:
        reason = await conn.open()
        if code_of(reason) in PERMANENT_REFUSALS:
            conn.abandon()
            raise MqttError(
                f"the broker at {self.settings.broker} refused the bridge's login "
                f"(CONNACK {reason}): check --password-file"
            )
        if reason.is_failure:
            conn.abandon()
            raise OSError(f"CONNACK refused: {reason}")
        self.connected = True
        log.info(
            "connected to the broker at %s as %s",
            self.settings.broker,
            self.settings.client_id,
            extra={"session": self.session},
        )
        self.publish_birth()
        self.handler.on_connected()

    async def _serve(self, conn: Connection) -> None:
        self._fatal = None
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keepalive(conn), name="mqtt-keepalive")
            tg.create_task(self._prime(conn), name="mqtt-prime")
        if self._fatal is not None:
            raise self._fatal

    async def _keepalive(self, conn: Connection) -> None:
        next_probe = 0.0
        while not self._lost.is_set():
            conn.loop_misc()
            now = time.monotonic()
            if self.primed and now >= next_probe:
                next_probe = now + self.settings.probe_interval
                self._probe(conn, now)
            await _wait(self._lost.wait(), min(1.0, self.settings.probe_interval))

    def _probe(self, conn: Connection, now: float) -> None:
        """Publish a probe on the marker topic; a link silent past `probe_timeout` is ended."""
        echo = self.last_echo
        if echo is not None and now - echo > self.settings.probe_timeout:
            log.warning(
                "no echo of our own probe for %.0fs: the broker link is silent; reconnecting",
                now - echo,
                extra={"session": self.session},
            )
            conn.disconnect()
            self._lost.set()
            return
        self.publish(self._marker_topic, b"", retain=False, qos=0)

    async def _prime(self, conn: Connection) -> None:
        topics = self.settings.topics
        filters = [
            (topics.all_devices(DeviceTopic.STATUS), 1),
            (topics.all_devices(DeviceTopic.REPORT), 1),
            (topics.all_devices(DeviceTopic.DESIRED), 1),
            (topics.all_devices(DeviceTopic.HEARTBEAT), 0),
            (topics.all_devices(DeviceTopic.LOGS_REPLY), 1),  # answers to our logs requests
        ]
        granted = await self._subscribe(conn, filters)
        if granted is None:
            return  # lost: `_serve` ends with the keep-alive task
        if not granted:
            self._refused(conn, [f for f, _ in filters])
            return
        self._refusals = 0
        deadline = time.monotonic() + self.settings.prime_max
        if not await self._settle(deadline, "the replay"):
            return
        batches = await self.handler.to_reread()
        if batches and not await self._reread(
            conn, batches, time.monotonic() + self.settings.prime_max
        ):
            return
        self.primed = True
        self.down_since = None
        log.info("subscribed and retained state read back", extra={"session": self.session})
        self.handler.on_primed()

    async def _subscribe(self, conn: Connection, filters: list[tuple[str, int]]) -> bool | None:
        """Whether the broker granted every filter; None when the link was lost first."""
        try:
            reasons = await conn.subscribe_acked(filters)
        except ConnectionLostError:
            self._lost.set()
            return None
        return not any(reason.is_failure for reason in reasons)

    async def _settle(self, deadline: float, what: str) -> bool:
        """Wait until what was sent before now has been delivered: our marker comes back (the
        brokers deliver one connection's messages in order), then no retained message for
        `quiet` s (brokers that replay concurrently). False when the link was lost."""
        self._marker.clear()
        self._last_retained = time.monotonic()
        self.publish(self._marker_topic, b"", retain=False)
        if not await _wait(self._marker.wait(), self.settings.marker_timeout):
            if self._lost.is_set():
                return False
            log.warning(
                "the sync marker did not come back after %s; relying on a quiet period", what
            )
        while (idle := time.monotonic() - self._last_retained) < self.settings.quiet:
            if time.monotonic() > deadline or await _wait(
                self._lost.wait(), self.settings.quiet - idle
            ):
                break
        return not self._lost.is_set()

    async def _reread(self, conn: Connection, batches: list[list[str]], deadline: float) -> bool:
        """Subscribe to each batch of exact topics (the broker sends their retained messages),
        settle, unsubscribe. Stops early (what is left counts as missing) on a refusal or past
        `deadline`; False when the link was lost."""
        for number, batch in enumerate(batches, 1):
            if time.monotonic() > deadline:
                log.warning("re-reading retained documents took too long; %d batches left",
                            len(batches) - number + 1)  # fmt: skip
                return True
            granted = await self._subscribe(conn, [(topic, 0) for topic in batch])  # `replaying`
            if granted is None:
                return False
            if not granted:
                log.warning("the broker refused re-reading %d retained documents", len(batch))
                conn.unsubscribe(batch)
                return True
            if not await self._settle(deadline, "re-reading retained documents"):
                return False
            conn.unsubscribe(batch)
        return True

    def _refused(self, conn: Connection, filters: list[str]) -> None:
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
        conn.disconnect()

    async def _close(self) -> None:
        """Say offline and disconnect (bounded); always release the socket."""
        conn, connected = self.connection, self.connected
        self.connected = self.primed = False
        if conn is None:
            return
        if not connected:
            conn.abandon()
            return
        offline = encode(BridgeStatus(state="offline", session=self.session))
        if not await conn.close(Will(self.settings.topics.bridge_status(), offline)):
            log.warning("the broker did not acknowledge the bridge's offline status in time")

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


async def _wait(waiting: Awaitable[object], seconds: float) -> bool:
    """Whether `waiting` finished within `seconds` (it is cancelled otherwise)."""
    try:
        async with asyncio.timeout(seconds):
            await waiting
    except TimeoutError:
        return False
    return True
