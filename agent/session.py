"""The agent's MQTT session: birth, will, heartbeat, status watch, reconnect with back-off.

The session protocol of DESIGN.md on top of `runtime.mqttloop` (the fabric's one MQTT transport:
one paho client per connection, on the event loop); nothing here touches paho. One connection per
session, and one `session` id per connection (`<boot id>-<counter>`, the boot id random per agent
process):

- the will (retained `offline`, reason `lost`, this session) is set before connecting;
- after CONNACK: retained birth (`online`, session, `heartbeat_s`, agent version and the device
  facts `agent.facts` read once at start), then the
  subscription to this device's `desired` and `status`;
- a status message that is not this session's birth (a late will of an older session, or any
  other status) makes the agent republish its birth;
- heartbeats (`{"session","seq"}`, QoS 0, not retained) on their own timer while connected;
- a replayed (retained-flag) desired document that arrives after a live one on the same
  connection is dropped: the replay is the state when the subscription began, so it is never
  newer, and a NATS cluster delivers its retained replay and live messages on separate paths
  (measured: the old document came second and rolled a process back).

The status subscription is QoS 0: it is advisory and replayed (retained) on every connect, and a
QoS 1 delivery the agent dies before acknowledging makes amqtt 0.12.1 hold the will back until its
PUBACK timeout (5 s). Reports are published only on a live connection; a new connection always
gets a first report (see `reporting`), so nothing has to be queued across connections. Refused
logins (bad user name or
password, not authorized, client id rejected) raise `LoginRefusedError`; every other failure
reconnects after exponential back-off with full jitter above a 1.2 s floor (NATS jails a client
id that returns within about a second), reset once a connection held for a while
(`runtime.mqttloop.reconnecting`).
`close()` publishes the retained `offline` (reason `shutdown`), waits for its PUBACK (bounded)
and disconnects, so the broker discards the will.

Clustered brokers: with `fallbacks` (the other nodes of a cluster), every failed try and every
lost connection moves on to the next node in turn, so a device whose node died reconnects through
a surviving one after its back-off. A SUBACK with a failure code (a NATS cluster refuses while
JetStream re-elects its stream leaders after a node died) is retried on the same connection,
1 s then doubled up to the keepalive, until the broker grants it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devicefabric.agent.errors import LoginRefusedError
from devicefabric.config import lean
from devicefabric.config.errors import PayloadError
from devicefabric.config.settings import BrokerURL
from devicefabric.config.topics import Topics
from devicefabric.runtime.backoff import Backoff
from devicefabric.runtime.mqtt import PERMANENT_REFUSALS, Endpoint, Will, code_of
from devicefabric.runtime.mqttloop import Connection, ConnectionLostError, reconnecting

log = logging.getLogger("devicefabric.agent.session")

CLOSE_TIMEOUT_S: Final = 2.0  # for the PUBACK of the shutdown status
RECONNECT_BASE_S: Final = 0.5
# Every reconnect waits at least this (plus jitter): NATS jails a client id that comes back within
# about a second (its flapper protection) and closes such a CONNECT without a CONNACK.
RECONNECT_FLOOR_S: Final = 1.2
RESUBSCRIBE_FIRST_S: Final = 1.0  # first retry of a refused subscription, doubled up to keepalive
HELD_FOR_RESET_S: Final = 10.0  # a connection that held this long resets the back-off


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
    fallbacks: tuple[BrokerURL, ...] = ()  # other nodes of a clustered broker, tried in turn

    @property
    def keepalive(self) -> int:
        """MQTT keepalive: twice the heartbeat (at least 5 s). paho sends a PINGREQ after one
        keepalive with nothing received (the heartbeats we send do not count) and gives up one
        keepalive later; `loop_misc` runs every keepalive / 4. A half-open link is therefore
        noticed 2 to 2.5 keepalives after the last packet in: about four heartbeats from a 3 s
        heartbeat up, 10-12.5 s at the 5 s floor (measured 9.9-10.1 s, docs/networks.md)."""
        return max(5, min(2 * self.heartbeat_s, 65535))

    def endpoint(self, broker: BrokerURL) -> Endpoint:
        """How this device logs in to `broker` (its name is its client id and user name)."""
        return Endpoint(
            broker=broker,
            client_id=self.device,
            username=self.device,
            password=self.password,
            keepalive=self.keepalive,
            tls_ca=self.tls_ca,
        )


class Session:
    """The agent's MQTT presence; `run()` blocks until cancelled or a login is refused."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        on_desired: Callable[[bytes], None],
        on_up: Callable[[], None],
        rand: Callable[[], float] = random.random,
        facts: lean.BirthFacts | None = None,
        on_logs: Callable[[bytes], list[bytes]] | None = None,
    ) -> None:
        """`on_logs(request payload)` answers a `logs/request` with the reply chunks to publish
        (QoS 1, not retained) on this device's `logs/reply`; None: logs are not served."""
        self._settings = settings
        self._facts: lean.BirthFacts = facts or {}  # in every birth (`agent.facts.gather`)
        self._on_desired = on_desired
        self._on_up = on_up
        self._on_logs = on_logs
        self._rand = rand
        self._boot = secrets.token_hex(4)
        self._counter = 0
        self._conn: Connection | None = None
        self._closing = False
        topics, device = settings.topics, settings.device
        self._t_status = topics.status(device)
        self._t_desired = topics.desired(device)
        self._t_heartbeat = topics.heartbeat(device)
        self._t_report = topics.report(device)
        self._t_logs_request = topics.logs_request(device)
        self._t_logs_reply = topics.logs_reply(device)
        self._failing = False
        self._live_desired = False  # a desired document arrived live (not replayed) on this link
        self._brokers = (settings.broker, *settings.fallbacks)
        self._at = 0  # index of the broker the next connection tries

    @property
    def broker(self) -> BrokerURL:
        """The broker the current (or next) connection uses."""
        return self._brokers[self._at]

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
    def _connection(self, session: str) -> Connection:
        will = Will(self._t_status, lean.encode_offline(session, "lost"))
        return Connection(self._settings.endpoint(self.broker), will, session=session)

    async def run(self) -> None:
        cap = self._settings.max_reconnect_backoff
        backoff = Backoff(
            base=min(RECONNECT_BASE_S, cap),
            cap=cap,
            jitter="full",
            rand=self._rand,
            floor=min(RECONNECT_FLOOR_S, cap),
        )
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        await reconnecting(
            self._attempt,
            backoff,
            reset_after=HELD_FOR_RESET_S,
            retry=self._retrying,
            stop=lambda: self._closing,
            clock=loop.time,
        )

    async def _attempt(self) -> bool:
        self._counter += 1
        conn = self._connection(f"{self._boot}-{self._counter}")
        try:
            return await self._hold(conn)
        finally:
            self._conn = None
            conn.abandon()

    def _retrying(self, _established: bool, delay: float) -> None:
        if len(self._brokers) > 1:  # a failed try or a lost link: the next node in turn
            self._at = (self._at + 1) % len(self._brokers)
        log.debug("reconnecting in %.2fs", delay, extra=self._extra())

    async def _hold(self, conn: Connection) -> bool:
        """Connect `conn` and keep it until it is lost; True when it was established."""
        broker = self.broker
        try:
            reason = await conn.open()
        except (OSError, TimeoutError, ConnectionLostError) as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            why = str(exc) or type(exc).__name__
            log.log(level, "cannot connect to %s: %s (retrying)", broker, why, extra=self._extra())
            self._failing = True
            return False
        if reason.is_failure:
            if code_of(reason) in PERMANENT_REFUSALS:
                raise LoginRefusedError(self._settings.device, str(broker), str(reason))
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "broker %s refused: %s (retrying)", broker, reason, extra=self._extra())
            self._failing = True
            return False
        self._failing = False
        self._live_desired = False
        self._birth(conn)
        conn.on_message = self._on_message
        self._conn = conn
        log.info("connected to %s", broker, extra=self._extra(reason="connected"))
        self._on_up()
        async with asyncio.TaskGroup() as tg:
            subscribe = tg.create_task(self._subscribe(conn), name="mqtt subscribe")
            heartbeats = tg.create_task(self._heartbeats(conn), name="heartbeat")
            keepalive = tg.create_task(self._keepalive(conn), name="mqtt keepalive")
            why = await conn.lost
            subscribe.cancel()
            heartbeats.cancel()
            keepalive.cancel()
        if not self._closing:
            lost = {"device": self._settings.device, "session": conn.session, "reason": "lost"}
            log.warning("connection lost: %s", why, extra=lost)
        return True

    async def _subscribe(self, conn: Connection) -> None:
        """Subscribe until granted: a SUBACK with a failure code (a clustered broker refuses
        while it elects) is retried with back-off, 1 s doubled up to the keepalive."""
        filters = [(self._t_desired, 1), (self._t_status, 0)]
        if self._on_logs is not None:
            filters.append((self._t_logs_request, 1))
        delay = RESUBSCRIBE_FIRST_S
        while True:
            try:
                reasons = await conn.subscribe_acked(filters)
            except ConnectionLostError:
                return  # `_hold` ends with the connection
            refused = [str(r) for r in reasons if r.is_failure]
            if not refused:
                return
            log.warning(
                "broker refused a subscription (%s): check the broker's access rules",
                ", ".join(refused),
                extra=self._extra(),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, float(self._settings.keepalive))
            log.info("subscribing again", extra=self._extra())

    def _birth(self, conn: Connection) -> None:
        birth = lean.encode_online(
            conn.session, self._settings.heartbeat_s, self._settings.agent_version, **self._facts
        )
        conn.publish(self._t_status, birth, qos=1, retain=True)

    async def _heartbeats(self, conn: Connection) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            seq += 1
            beat = lean.encode_heartbeat(conn.session, seq)
            conn.publish(self._t_heartbeat, beat, qos=0, retain=False)
            log.debug("heartbeat %d", seq, extra=self._extra())

    async def _keepalive(self, conn: Connection) -> None:
        interval = self._settings.keepalive / 4
        while True:
            await asyncio.sleep(interval)
            conn.loop_misc()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        if topic == self._t_desired:
            if not retained:
                self._live_desired = True
            elif self._live_desired:  # a replay is never newer than a live message after it
                log.info("ignoring a replayed desired document older than the live one")
                return
            self._on_desired(payload)
        elif topic == self._t_status:
            self._check_status(conn, payload)
        elif topic == self._t_logs_request and self._on_logs is not None and not retained:
            for chunk in self._on_logs(payload):
                conn.publish(self._t_logs_reply, chunk, qos=1, retain=False)

    def _check_status(self, conn: Connection, payload: bytes) -> None:
        if self._closing:  # our own clean offline coming back must stay the last word
            return
        status = lean.decode_status(payload)
        if isinstance(status, PayloadError):
            seen = f"an invalid status ({status.reason})"
        else:
            state, session = status
            if state == "online" and session == conn.session:
                return
            seen = f"{state} for session {session}"
        log.info("status topic says %s: republishing birth", seen, extra=self._extra())
        self._birth(conn)

    # -- shutdown ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Publish the retained clean `offline` and disconnect; bounded, never raises."""
        self._closing = True
        conn = self._conn
        if conn is None or conn.lost.done():
            return
        offline = Will(self._t_status, lean.encode_offline(conn.session, "shutdown"))
        if not await conn.close(offline, CLOSE_TIMEOUT_S):
            log.warning("clean offline not acknowledged", extra=self._extra())
        log.info("disconnected", extra=self._extra(reason="shutdown"))
