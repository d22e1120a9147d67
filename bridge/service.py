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

What each input does (a resource change, an MQTT message, a transition, a write's outcome) is
`dispatching.Dispatch`, the half of `Bridge` that reacts; this module composes the parts, runs the
tasks (informers, MQTT link, writers, Events, stale sweep, leadership) and serves HTTP, rendered
from `snapshot()` (a read-only `api.BridgeSnapshot`, which tests read too).

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
import logging
import time
from typing import Final, Self

from prometheus_client import CollectorRegistry

from devicefabric.bridge import api
from devicefabric.bridge.controlplane.base import ControlPlane, FleetPlane
from devicefabric.bridge.dispatching import Dispatch
from devicefabric.bridge.eventing import EventRecorder
from devicefabric.bridge.fleets import FleetController
from devicefabric.bridge.http import HttpServer, Query, Response
from devicefabric.bridge.ingest import Ingest
from devicefabric.bridge.logrelay import LogRelay, LogsError, LogServer
from devicefabric.bridge.metrics import BridgeMetrics
from devicefabric.bridge.mirroring import Mirror, ResourceIndex
from devicefabric.bridge.mqtt import LinkSettings, MqttLink
from devicefabric.bridge.queueing import (
    KeyedQueue,
    TokenBucket,
    WorkQueue,
)
from devicefabric.bridge.replaying import ReplayLedger
from devicefabric.bridge.settings import BridgeSettings, default_client_id
from devicefabric.bridge.tracking import DeviceTracker
from devicefabric.bridge.writing import StatusWriter
from devicefabric.config.errors import DeviceFabricError
from devicefabric.config.resource import Reason
from devicefabric.config.topics import Topics
from devicefabric.runtime.lifecycle import Closing, stop_task
from devicefabric.runtime.tasks import first_error

log = logging.getLogger("devicefabric.bridge")

SWEEP_MIN: Final = 0.05  # s: the sweep never wakes more often than this...
SWEEP_MAX: Final = 0.5  # ...nor sleeps longer (a new short-heartbeat device is found in time)
LEADERSHIP_POLL: Final = 0.5


__all__ = ["Bridge", "BridgeSettings", "default_client_id"]


class Bridge(Dispatch, Closing):
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
        self._settings = settings
        self._control_plane = control_plane
        self._fleet_plane = fleet
        self._topics = Topics(settings.root)
        self._tracker = DeviceTracker(settings.stale_multiplier)
        self._mirror = Mirror(settings.max_payload)
        self._index = ResourceIndex()
        self._ledger = ReplayLedger()
        self._rereading = []
        self._ingest = Ingest(self._topics, self._tracker, self._mirror, ledger=self._ledger)
        self._metrics = metrics if metrics is not None else BridgeMetrics()
        self._queue = WorkQueue(
            KeyedQueue(
                min_interval=settings.min_write_interval, key_burst=settings.key_write_burst
            ),
            TokenBucket(settings.write_qps, settings.write_burst, time.monotonic()),
            on_outcome=self._on_outcome,
        )
        self._link = MqttLink(
            LinkSettings(
                broker=settings.broker,
                password=settings.password,
                client_id=settings.client_id,
                topics=self._topics,
                tls_ca=settings.tls_ca,
                keepalive=settings.keepalive,
            ),
            self,
        )
        self._logs = LogRelay(
            self._topics, lambda topic, payload: self._link.publish(topic, payload, retain=False)
        )
        self._http = (
            HttpServer(
                settings.http,
                {
                    "/healthz": lambda _query: self._healthz(),
                    "/readyz": lambda _query: self._readyz(),
                    "/metrics": lambda _query: api.metrics(self._metrics.registry),
                    "/devices": self._devices,
                },
                prefixes={"/logs/": LogServer(self._logs, self._log_target)},
            )
            if settings.http is not None
            else None
        )
        self._ready = asyncio.Event()
        self._primed = asyncio.Event()
        self._replayed = set()
        self._events = EventRecorder(
            control_plane,
            TokenBucket(settings.event_qps, settings.event_burst, time.monotonic()),
            self._metrics,
            settings.call_timeout,
        )
        self._writer = StatusWriter(
            control_plane,
            self._tracker,
            self._queue.acquire,
            events=self._events,
            rejected=self._mirror.rejected,
            metrics=self._metrics,
            call_timeout=settings.call_timeout,
        )
        self._writer.on_slow = lambda: self._queue.bucket.drain(time.monotonic())
        self._fleet = (
            FleetController(
                fleet,
                control_plane,
                self._tracker,
                self._index,
                acquire=self._queue.acquire,
                enqueue=self._enqueue_fleet,
            )
            if fleet is not None
            else None
        )
        self._task: asyncio.Task[None] | None = None
        self._resyncs = 0
        self._metrics.bind(self.snapshot)

    # -- what it knows (read-only) ---------------------------------------------------------------
    def snapshot(self, *devices: str) -> api.BridgeSnapshot:
        """A copy of the bridge's state now, with the views of `devices` it knows (by name)."""
        now = time.monotonic()
        plane = self._control_plane
        return api.BridgeSnapshot(
            mqtt_connected=self._link.connected,
            mqtt_primed=self._link.primed,
            session=self._link.session,
            synced=self._synced(),
            leading=plane.leading.is_set(),
            queue_depth=len(self._queue),
            not_leading=plane.not_leading,
            shards=plane.shards,
            mqtt_down_for=self._mqtt_down_for(now),
            event_queue_depth=len(self._events),
            resyncs=self._resyncs,
            messages=dict(self._ingest.stats.messages),
            invalid=dict(self._ingest.stats.invalid),
            device_states=self._tracker.counts(),
            desired_read_back=len(self._mirror.observed),
            devices={v.name: v for v in api.views_of(self._tracker, self._index, now, devices)},
        )

    def _mqtt_down_for(self, now: float) -> float | None:
        """Seconds the MQTT link has not been primed (None: it is)."""
        since = self._link.down_since
        return now - since if since is not None else None

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry the bridge counts into (served at `/metrics`)."""
        return self._metrics.registry

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    # -- lifecycle -------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self._synced() and self._link.primed

    def _synced(self) -> bool:
        """Every kind listed: DeviceProcesses, and with the fleet kinds Devices and sets (a
        cluster without their CRDs never lists them: not ready, and the informer says why)."""
        fleet = self._fleet_plane
        return self._control_plane.synced.is_set() and (
            fleet is None or fleet.fleet_synced.is_set()
        )

    async def run(self) -> None:
        """Run until cancelled (binds HTTP first: a taken port raises `ConfigError` at once)."""
        if self._http is not None:
            await self._http.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._control_plane.run(self._on_resource), name="controlplane")
                if self._fleet_plane is not None and self._fleet is not None:
                    tg.create_task(self._fleet_plane.run_fleet(self._fleet.on_fleet), name="fleet")
                tg.create_task(self._link.run(), name="mqtt")
                tg.create_task(self._startup(), name="startup")
                tg.create_task(self._sweeper(), name="sweep")
                tg.create_task(self._leadership(), name="leadership")
                tg.create_task(self._events.run(), name="events")
                # no more writes in flight than the burst: writes a stalled path held arrive
                # together when it heals, and must still fit the budget
                for i in range(min(self._settings.workers, self._settings.write_burst)):
                    tg.create_task(self._queue.serve(self._reconcile), name=f"writer-{i}")
                if self._http is not None:
                    tg.create_task(self._http.serve(), name="http")
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def __aenter__(self) -> Self:
        if self._http is not None:
            await self._http.start()
        self._task = asyncio.create_task(self.run(), name="bridge")
        return self

    async def aclose(self) -> None:
        """Stop the bridge `__aenter__` started (it says offline and disconnects)."""
        task, self._task = self._task, None
        await stop_task(task)

    async def wait_ready(self) -> None:
        """Wait until ready; raise the bridge's error if it stopped first (with `async with`)."""
        if self._task is None:
            await self._ready.wait()
            return
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._ready.is_set():
            self._task.result()  # raises the bridge's error
            raise DeviceFabricError("the bridge stopped before it was ready")

    async def _startup(self) -> None:
        await self._control_plane.synced.wait()
        if self._fleet_plane is not None:
            await self._fleet_plane.fleet_synced.wait()
        await self._primed.wait()
        log.info(
            "ready: %d resources, %d devices known", sum(1 for _ in self._control_plane.resources()),
            len(self._tracker),
        )  # fmt: skip
        self._ready.set()

    async def _leadership(self) -> None:
        await self._ready.wait()
        leading = self._control_plane.leading
        while True:
            await leading.wait()
            log.info("leading: reconciling every resource and device")
            self._link.publish_birth()
            self._resync()
            gains = self._control_plane.gains
            # The interface signals gaining leadership only; losing it is polled (cheap, rare),
            # and so are shards gained while leading (each: everything reconciled again).
            while leading.is_set():
                await asyncio.sleep(LEADERSHIP_POLL)
                if self._control_plane.gains != gains:
                    gains = self._control_plane.gains
                    self._link.publish_birth()  # over a killed replica's retained will
                    self._resync()
            log.info("no longer leading: writes stop")

    async def _sweeper(self) -> None:
        while True:
            deadline = self._tracker.next_deadline()
            now = time.monotonic()
            delay = SWEEP_MAX if deadline is None else max(SWEEP_MIN, deadline - now)
            await asyncio.sleep(min(SWEEP_MAX, delay))
            if self._link.primed:  # only up to when our own probe proved the link worked
                self._apply(self._tracker.sweep(self._link.vouched(time.monotonic())))
                self._republish_unechoed()

    # -- control plane ---------------------------------------------------------------------------

    # -- MQTT (LinkHandler) ----------------------------------------------------------------------

    # -- HTTP ------------------------------------------------------------------------------------
    def _log_target(self, key: str) -> str:
        """The device to ask for `key`'s logs; `LogsError` (404, 503) when there is none."""
        resource = self._control_plane.get(key)
        if resource is None:
            raise LogsError(404, f"deviceprocess {key} not found")
        device = resource.device
        known = self._tracker.get(device) if device is not None else None
        if device is None or known is None or known.reason is not Reason.CONNECTED:
            state = known.reason.value if known is not None and known.reason else "not seen"
            raise LogsError(
                503,
                f"device {device} is not connected ({state}): its logs stay on the device "
                "until it is back",
            )
        return device

    def _healthz(self) -> Response:
        # Only the link's age: a probe must not pay for the snapshot's pass over every device.
        down = self._mqtt_down_for(time.monotonic())
        return api.healthz(down, self._settings.mqtt_down_limit)

    async def _devices(self, query: Query) -> Response:
        names = api.page(self._tracker, query)
        now = time.monotonic()
        views: list[api.DeviceView] = []
        for start in range(0, len(names), api.VIEW_CHUNK):  # the loop serves others in between
            views += api.views_of(
                self._tracker, self._index, now, names[start : start + api.VIEW_CHUNK]
            )
            await asyncio.sleep(0)
        return await asyncio.to_thread(api.render_devices, views)

    def _readyz(self) -> Response:
        return api.readyz(self.snapshot())
