"""The bridge service: composes ingest, tracking, mirroring, the write queue, MQTT and HTTP.

How to construct and run it (the API `devicefabric up` and `bridge run` use)::

    from devicefabric.bridge.service import Bridge, BridgeSettings
    from devicefabric.config.settings import HostPort, parse_broker_url

    settings = BridgeSettings(
        broker=parse_broker_url("mqtt://127.0.0.1:1883"),
        password=bridge_password,                 # the `bridge` user's derived password
        client_id=default_client_id(),            # bridge_<host>_<random>, unique per process
        http=HostPort("127.0.0.1", 8080),         # None: no HTTP server
    )
    bridge = Bridge(settings, control_plane)      # any `controlplane.base.ControlPlane`

    await bridge.run()                            # blocks until cancelled; or:
    async with bridge:                            # binds HTTP at once (ConfigError naming --http
        await bridge.wait_ready()                 # if the port is taken), runs in a task,
        ...                                       # cancels and says offline on exit

`run()` raises the first real error of its tasks unwrapped (`ConfigError`, `MqttError`, ...).

Data flow (everything on one event loop; the control plane's `on_change` and the MQTT handler are
plain synchronous callbacks):
- Informer change of a resource -> update the device index; re-mirror the devices it affects
  (spec, generation or device changed); enqueue its key.
- Device transition (tracker, from a message or the stale sweep) -> enqueue every resource of
  that device. A report -> enqueue only the keys whose reported entry changed. A heartbeat ->
  nothing (the tracker's fast path returns no change).
- A report or resource change is written at once when the report completes the change (its
  generation, no longer Pending), else after `settle` (intermediate states coalesce).
- A worker pops a key and runs `writing.StatusWriter.reconcile`: the status from the current
  state (`statuses.plan_status`), written only where it differs: one status patch and, on an
  `AgentConnected` reason change, one Event, each taking a token of the global write budget. A
  write spends one of the key's credits (a few at once, then one per `min_write_interval`).

Invariants:
- Nothing is written (status, Event or `desired`) until the control plane is synced and the MQTT
  retained state was read back (`ready`), nor while `control_plane.leading` is clear. Each time
  leadership is (re)gained every key is reconciled and every device re-mirrored: writes happen
  only where the stored state differs, so a restart with everything healthy writes nothing.
  With shards (`--shards`), a device is written only while `control_plane.may_write(device)`
  (its shard's Lease held), and every shard gained triggers the same full reconcile.
- Our own writes are overlaid on the informer's cached status until the cache moves past the
  resource version we wrote against (`writing`), so no patch is written twice.
- Every replica publishes its retained birth on connecting; the leader publishes it again when it
  gains leadership (with shards: and each shard), so the retained `bridge/status` names a writing
  replica's session, not the will of one that was killed.
- A retained replay is checked, not trusted: documents expected and not delivered are re-read
  (`replaying`) before the link counts as primed, and only `desired` documents confirmed missing
  are published again (a partial replay never republishes the whole fleet).
- The stale sweep runs only while the MQTT link is primed (the bridge does not blame devices for
  its own outage) and `resume` restarts every deadline after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from devicefabric.bridge import api
from devicefabric.bridge.controlplane.base import ControlPlane, FleetPlane, Resource
from devicefabric.bridge.eventing import EventRecorder
from devicefabric.bridge.fleets import FleetController, is_fleet_key
from devicefabric.bridge.http import HttpServer, Query, Response
from devicefabric.bridge.ingest import Ingest
from devicefabric.bridge.logrelay import LogRelay, LogsError, LogServer
from devicefabric.bridge.metrics import BridgeMetrics, StateSource
from devicefabric.bridge.mirroring import Mirror, ResourceIndex
from devicefabric.bridge.mqtt import LinkSettings, MqttLink
from devicefabric.bridge.queueing import (
    DEFAULT_KEY_BURST,
    DEFAULT_MIN_INTERVAL,
    KeyedQueue,
    Outcome,
    TokenBucket,
    WorkQueue,
)
from devicefabric.bridge.replaying import Expected, ReplayLedger, reread_topics
from devicefabric.bridge.statuses import write_delay
from devicefabric.bridge.tracking import Change, DeviceTracker, Transition
from devicefabric.bridge.writing import StatusWriter
from devicefabric.config.errors import DeviceFabricError
from devicefabric.config.resource import Reason
from devicefabric.config.settings import (
    DEFAULT_EVENT_BURST,
    DEFAULT_EVENT_QPS,
    DEFAULT_STALE_MULTIPLIER,
    DEFAULT_WRITE_BURST,
    DEFAULT_WRITE_QPS,
    BrokerURL,
    HostPort,
)
from devicefabric.config.topics import DEFAULT_ROOT, DeviceTopic, Topics
from devicefabric.config.wire import MAX_PAYLOAD_BYTES, encode
from devicefabric.runtime.lifecycle import Closing, stop_task
from devicefabric.runtime.tasks import first_error

log = logging.getLogger("devicefabric.bridge")

ECHO_TIMEOUT: Final = 10.0  # s: a published desired not read back by then is published again
SWEEP_MIN: Final = 0.05  # s: the sweep never wakes more often than this...
SWEEP_MAX: Final = 0.5  # ...nor sleeps longer (a new short-heartbeat device is found in time)
LEADERSHIP_POLL: Final = 0.5
STATUS_SUFFIX: Final = "/status"
LOGS_REPLY_SUFFIX: Final = "/logs/reply"
REREAD_SYNC_WAIT: Final = 15.0  # s: re-reading the replay waits this long for the first list


def default_client_id() -> str:
    """`bridge_<POD_NAME or hostname>_<8 random hex>`: unique per process, so nobody can take the
    bridge's session over by guessing its id; short (the host part is cut to 20 characters of
    `[A-Za-z0-9-]`) and never a device name (a device name has no `_`)."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    host = re.sub(r"[^A-Za-z0-9-]", "-", host)[:20] or "host"
    return f"bridge_{host}_{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Everything the bridge needs besides its control plane."""

    broker: BrokerURL  # mqtt://host:port or mqtts://host:port (--broker)
    password: str  # the `bridge` user's password (--password-file)
    client_id: str  # MQTT client id; distinct per replica, never a device name (--client-id)
    http: HostPort | None = None  # /healthz /readyz /metrics /devices (--http); None: off
    root: str = DEFAULT_ROOT  # topic root
    tls_ca: Path | None = None  # CA bundle for mqtts:// (--tls-ca); None: system CAs
    write_qps: float = DEFAULT_WRITE_QPS  # sustained status writes per second (--write-qps)
    write_burst: int = DEFAULT_WRITE_BURST  # status writes at once before the rate applies
    event_qps: float = DEFAULT_EVENT_QPS  # Events per second, a budget of their own (--event-qps)
    event_burst: int = DEFAULT_EVENT_BURST  # Events at once before their rate applies
    stale_multiplier: float = DEFAULT_STALE_MULTIPLIER  # HeartbeatTimeout after this x heartbeat_s
    min_write_interval: float = DEFAULT_MIN_INTERVAL  # s between writes of one resource, after...
    key_write_burst: int = DEFAULT_KEY_BURST  # ...this many in quick succession (per resource)
    workers: int = 4  # concurrent writers (each write still takes a token)
    # s an intermediate state (Synced=Pending, phase Pending) waits before its write, so a spec
    # change lands as one write: the report completing it (its generation, no longer Pending) is
    # written at once and supersedes the wait (`statuses.write_delay`); device transitions
    # (connect, will, timeout) are written at once.
    settle: float = 0.05
    keepalive: int = 30  # MQTT keepalive (s)
    call_timeout: float = 10.0  # s: bound of one control-plane call
    # s the MQTT link may stay down (not subscribed and read back) before /healthz fails
    mqtt_down_limit: float = 120.0  # (--mqtt-down-limit)
    max_payload: int = MAX_PAYLOAD_BYTES  # bytes of one desired document (the brokers' limit)


class Bridge(Closing):
    """The bridge service; see the module doc for how to run it."""

    def __init__(
        self,
        settings: BridgeSettings,
        control_plane: ControlPlane,
        *,
        metrics: BridgeMetrics | None = None,
        fleet: FleetPlane | None = None,
    ) -> None:
        """`fleet`: the Devices and DeviceProcessSets of the same control plane (None: the
        bridge serves DeviceProcesses only)."""
        self.settings = settings
        self.control_plane = control_plane
        self.fleet_plane = fleet
        self.topics = Topics(settings.root)
        self.tracker = DeviceTracker(settings.stale_multiplier)
        self.mirror = Mirror(settings.max_payload)
        self.index = ResourceIndex()
        self.ledger = ReplayLedger()
        self._rereading: list[tuple[str, DeviceTopic]] = []
        self.ingest = Ingest(self.topics, self.tracker, self.mirror, ledger=self.ledger)
        self.metrics = metrics if metrics is not None else BridgeMetrics()
        self.queue = WorkQueue(
            KeyedQueue(
                min_interval=settings.min_write_interval, key_burst=settings.key_write_burst
            ),
            TokenBucket(settings.write_qps, settings.write_burst, time.monotonic()),
            on_outcome=self._on_outcome,
        )
        self.link = MqttLink(
            LinkSettings(
                broker=settings.broker,
                password=settings.password,
                client_id=settings.client_id,
                topics=self.topics,
                tls_ca=settings.tls_ca,
                keepalive=settings.keepalive,
            ),
            self,
        )
        self.logs = LogRelay(
            self.topics, lambda topic, payload: self.link.publish(topic, payload, retain=False)
        )
        self.http = (
            HttpServer(
                settings.http,
                {
                    "/healthz": lambda _query: self._healthz(),
                    "/readyz": lambda _query: self._readyz(),
                    "/metrics": lambda _query: api.metrics(self.metrics.registry),
                    "/devices": self._devices,
                },
                prefixes={"/logs/": LogServer(self.logs, self._log_target)},
            )
            if settings.http is not None
            else None
        )
        self.ready = asyncio.Event()  # latched: synced and primed once
        self._primed = asyncio.Event()
        self._replayed: set[str] = set()  # keys a replay changed, written once it is complete
        self.events = EventRecorder(
            control_plane,
            TokenBucket(settings.event_qps, settings.event_burst, time.monotonic()),
            self.metrics,
            settings.call_timeout,
        )
        self.writer = StatusWriter(
            control_plane,
            self.tracker,
            self.queue.acquire,
            events=self.events,
            rejected=self.mirror.rejected,
            metrics=self.metrics,
            call_timeout=settings.call_timeout,
        )
        self.writer.on_slow = lambda: self.queue.bucket.drain(time.monotonic())
        self.fleet = (
            FleetController(
                fleet,
                control_plane,
                self.tracker,
                self.index,
                acquire=self.queue.acquire,
                enqueue=self._enqueue_fleet,
            )
            if fleet is not None
            else None
        )
        self._task: asyncio.Task[None] | None = None
        self.resyncs = 0  # full reconciliations started (each leadership gain); tests wait on it
        self.metrics.bind(
            StateSource(
                messages=lambda: self.ingest.stats.messages,
                invalid=lambda: self.ingest.stats.invalid,
                devices=self.tracker.counts,
                queue_depth=lambda: len(self.queue),
                event_queue_depth=lambda: len(self.events),
                mqtt_connected=lambda: self.link.connected,
                leading=self.control_plane.leading.is_set,
                ready=self.is_ready,
            )
        )

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def is_ready(self) -> bool:
        return self._synced() and self.link.primed

    def _synced(self) -> bool:
        """Every kind listed: DeviceProcesses, and with the fleet kinds Devices and sets (a
        cluster without their CRDs never lists them: not ready, and the informer says why)."""
        fleet = self.fleet_plane
        return self.control_plane.synced.is_set() and (fleet is None or fleet.fleet_synced.is_set())

    async def run(self) -> None:
        """Run until cancelled (binds HTTP first: a taken port raises `ConfigError` at once)."""
        if self.http is not None:
            await self.http.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.control_plane.run(self._on_resource), name="controlplane")
                if self.fleet_plane is not None and self.fleet is not None:
                    tg.create_task(self.fleet_plane.run_fleet(self.fleet.on_fleet), name="fleet")
                tg.create_task(self.link.run(), name="mqtt")
                tg.create_task(self._startup(), name="startup")
                tg.create_task(self._sweeper(), name="sweep")
                tg.create_task(self._leadership(), name="leadership")
                tg.create_task(self.events.run(), name="events")
                # no more writes in flight than the burst: writes a stalled path held arrive
                # together when it heals, and must still fit the budget
                for i in range(min(self.settings.workers, self.settings.write_burst)):
                    tg.create_task(self.queue.serve(self._reconcile), name=f"writer-{i}")
                if self.http is not None:
                    tg.create_task(self.http.serve(), name="http")
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def __aenter__(self) -> Self:
        if self.http is not None:
            await self.http.start()
        self._task = asyncio.create_task(self.run(), name="bridge")
        return self

    async def aclose(self) -> None:
        """Stop the bridge `__aenter__` started (it says offline and disconnects)."""
        task, self._task = self._task, None
        await stop_task(task)

    async def wait_ready(self) -> None:
        """Wait until ready; raise the bridge's error if it stopped first (with `async with`)."""
        if self._task is None:
            await self.ready.wait()
            return
        waiter = asyncio.ensure_future(self.ready.wait())
        try:
            await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self.ready.is_set():
            self._task.result()  # raises the bridge's error
            raise DeviceFabricError("the bridge stopped before it was ready")

    async def _startup(self) -> None:
        await self.control_plane.synced.wait()
        if self.fleet_plane is not None:
            await self.fleet_plane.fleet_synced.wait()
        await self._primed.wait()
        log.info(
            "ready: %d resources, %d devices known", sum(1 for _ in self.control_plane.resources()),
            len(self.tracker),
        )  # fmt: skip
        self.ready.set()

    async def _leadership(self) -> None:
        await self.ready.wait()
        leading = self.control_plane.leading
        while True:
            await leading.wait()
            log.info("leading: reconciling every resource and device")
            self.link.publish_birth()
            self._resync()
            gains = self.control_plane.gains
            # The interface signals gaining leadership only; losing it is polled (cheap, rare),
            # and so are shards gained while leading (each: everything reconciled again).
            while leading.is_set():
                await asyncio.sleep(LEADERSHIP_POLL)
                if self.control_plane.gains != gains:
                    gains = self.control_plane.gains
                    self.link.publish_birth()  # over a killed replica's retained will
                    self._resync()
            log.info("no longer leading: writes stop")

    async def _sweeper(self) -> None:
        while True:
            deadline = self.tracker.next_deadline()
            now = time.monotonic()
            delay = SWEEP_MAX if deadline is None else max(SWEEP_MIN, deadline - now)
            await asyncio.sleep(min(SWEEP_MAX, delay))
            if self.link.primed:  # only up to when our own probe proved the link worked
                self._apply(self.tracker.sweep(self.link.vouched(time.monotonic())))
                self._republish_unechoed()

    def _republish_unechoed(self) -> None:
        for device in self.mirror.expire_sent(time.monotonic(), ECHO_TIMEOUT):
            log.warning(
                "desired for %s not read back within %.0fs; publishing it again",
                device, ECHO_TIMEOUT, extra={"device": device},
            )  # fmt: skip
            self._mirror_device(device)

    def _resync(self) -> None:
        self.resyncs += 1
        for device in set(self.index.devices()) | self.mirror.devices():
            self._mirror_device(device)
        for resource in self.control_plane.resources():
            self.queue.add(resource.key)
        if self.fleet is not None:
            for key in self.fleet.all_keys():
                self.queue.add(key)

    async def _reconcile(self, key: str) -> Outcome:
        if self.fleet is not None and is_fleet_key(key):
            return await self.fleet.reconcile(key)
        return await self.writer.reconcile(key)

    def _on_outcome(self, key: str, outcome: Outcome) -> None:
        if self.fleet is None:
            return
        if not is_fleet_key(key):
            if outcome is Outcome.WROTE:
                self.fleet.on_status_written(key)
        elif (delay := self.fleet.wakeup(key)) is not None:
            self.queue.add(key, delay=delay)

    def _enqueue_fleet(self, key: str, delay: float = 0.0) -> None:
        if self.ready.is_set():  # before: the first reconcile (`_resync`) queues every key
            self.queue.add(key, delay=delay)

    # -- control plane ---------------------------------------------------------------------------
    def _on_resource(self, key: str) -> None:
        resource = self.control_plane.get(key)
        devices = self.index.update(key, resource)
        if resource is None:
            self.writer.forget(key)
            self.queue.forget(key)
        if self.fleet is not None:
            self.fleet.on_process(key, resource, devices)
        if not self.ready.is_set():
            return
        for device in devices:
            self._mirror_device(device)
        if resource is not None:
            self.queue.add(key, delay=self._write_delay(resource, resource.device))

    def _mirror_device(self, device: str) -> None:
        if not (self.ready.is_set() and self.link.primed and self.control_plane.may_write(device)):
            return
        resources = [
            r
            for key in self.index.keys_of(device)
            if (r := self.control_plane.get(key)) is not None
        ]
        plan = self.mirror.plan(device, resources)
        for key in plan.refusals_changed:  # Synced=False/InvalidSpec appears or goes away
            self.queue.add(key)
        doc = plan.doc
        if doc is None:
            return
        if self.link.publish(self.topics.desired(device), encode(doc), retain=True):
            self.mirror.published(device, doc, time.monotonic())
            self.metrics.desired_published.inc()
            log.info(
                "published desired revision %s (%d processes)", doc.revision, len(doc.processes),
                extra={"device": device},
            )  # fmt: skip

    # -- MQTT (LinkHandler) ----------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic.endswith(LOGS_REPLY_SUFFIX):  # a device's answer to a logs request of ours
            with contextlib.suppress(DeviceFabricError):
                device = self.topics.parse(topic).device
                if device is not None and not retained:
                    self.logs.on_reply(device, payload)
            return
        changes = self.ingest.feed(topic, payload, time.monotonic(), retained=retained)
        if changes:
            self._apply(changes)
        if self.fleet is not None and topic.endswith(STATUS_SUFFIX):  # a birth or a will
            with contextlib.suppress(DeviceFabricError):
                device = self.topics.parse(topic).device
                if device is not None:
                    self.fleet.on_device(device, transition=False)

    def on_connected(self) -> None:
        self.mirror.reset_sent()
        self.ledger.start()
        self._rereading = []

    async def to_reread(self) -> list[list[str]]:
        """The retained documents to re-read (`replaying`); what is expected is known only once
        the control plane has listed (waited for, at most `REREAD_SYNC_WAIT` s)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REREAD_SYNC_WAIT):
                await self.control_plane.synced.wait()
        if not self.control_plane.synced.is_set():
            log.warning(
                "the control plane has not listed after %.0fs: the retained replay is not checked "
                "(documents it lacks are published again once it has)", REREAD_SYNC_WAIT,
            )  # fmt: skip
            return []
        with_resources = frozenset(self.index.devices())
        expected = Expected(with_resources | self.mirror.devices(), with_resources)
        self._rereading = self.ledger.unseen(expected)
        return list(reread_topics(self.topics, self._rereading))

    def on_primed(self) -> None:
        self.tracker.resume(time.monotonic())
        if self._rereading:
            missing = self.ledger.confirm(self._rereading)
            for device in missing:  # not retained after all: `plan` publishes it again
                self.mirror.observe(device, None)
            log.info(
                "retained replay checked: %d expected documents had not arrived, %d re-read, "
                "%d missing (%d desired documents to publish)",
                len(self._rereading), self.ledger.reread - self.ledger.missing,
                self.ledger.missing, len(missing),
            )  # fmt: skip
            self.metrics.replay_reread.inc(len(self._rereading))
            self.metrics.replay_missing.inc(self.ledger.missing)
            self._rereading = []
        self._primed.set()
        replayed, self._replayed = self._replayed, set()
        for key in replayed:  # what the replay after a reconnect changed, once, all of it read
            self.queue.add(key)
        if self.ready.is_set():
            for device in set(self.index.devices()) | self.mirror.devices():
                self._mirror_device(device)

    def on_lost(self) -> None:
        """Nothing to undo: the sweep pauses (not primed) and the replay reconciles."""

    def _apply(self, changes: tuple[Change, ...] | list[Transition]) -> None:
        ready = self.ready.is_set()
        for change in changes:
            keys = self.index.keys_of(change.device)
            if isinstance(change, Transition):
                if self.fleet is not None:
                    self.fleet.on_device(change.device, transition=True)
                # A first sighting (previous None, e.g. the retained replay) is no transition.
                first = change.previous is None
                if not first:
                    self.metrics.transitions.labels(change.reason.value).inc()
                log.log(
                    logging.DEBUG if first else logging.INFO,
                    "device %s: %s", change.device, change.reason.value,
                    extra={"device": change.device, "session": change.session,
                           "reason": change.reason.value},
                )  # fmt: skip
            elif change.keys is not None:
                keys = keys & change.keys
            if ready and not self.link.primed:
                self._replayed.update(keys)  # a replay after a reconnect: one write at its end
            elif ready:
                transition = isinstance(change, Transition)
                for key in keys:
                    delay = (
                        0.0
                        if transition
                        else self._write_delay(self.control_plane.get(key), change.device)
                    )
                    self.queue.add(key, delay=delay)

    def _write_delay(self, resource: Resource | None, device: str | None) -> float:
        """At once when the report completes the change, else after the settle (`statuses`)."""
        known = self.tracker.get(device) if device is not None else None
        return write_delay(resource, known, self.settings.settle)

    # -- HTTP ------------------------------------------------------------------------------------
    def _log_target(self, key: str) -> str:
        """The device to ask for `key`'s logs; `LogsError` (404, 503) when there is none."""
        resource = self.control_plane.get(key)
        if resource is None:
            raise LogsError(404, f"deviceprocess {key} not found")
        device = resource.device
        known = self.tracker.get(device) if device is not None else None
        if device is None or known is None or known.reason is not Reason.CONNECTED:
            state = known.reason.value if known is not None and known.reason else "not seen"
            raise LogsError(
                503,
                f"device {device} is not connected ({state}): its logs stay on the device "
                "until it is back",
            )
        return device

    def _healthz(self) -> Response:
        since = self.link.down_since
        down = time.monotonic() - since if since is not None else None
        return api.healthz(down, self.settings.mqtt_down_limit)

    async def _devices(self, query: Query) -> Response:
        names = api.page(self.tracker, query)
        now = time.monotonic()
        views: list[api.DeviceView] = []
        for start in range(0, len(names), api.VIEW_CHUNK):  # the loop serves others in between
            views += api.views_of(
                self.tracker, self.index, now, names[start : start + api.VIEW_CHUNK]
            )
            await asyncio.sleep(0)
        return await asyncio.to_thread(api.render_devices, views)

    def _readyz(self) -> Response:
        return api.readyz(
            api.Readiness(
                mqtt_connected=self.link.connected,
                mqtt_primed=self.link.primed,
                session=self.link.session,
                synced=self._synced(),
                leading=self.control_plane.leading.is_set(),
                not_leading=self.control_plane.not_leading,
                shards=self.control_plane.shards,
                queue_depth=len(self.queue),
            )
        )
