"""The bridge's data flow: what each input does to the mirror, the device index and the queue.

`Dispatch` is the half of `service.Bridge` that reacts; the service composes the parts it names
(tracker, mirror, index, ingest, queue, link, status writer, fleet controller) and runs the tasks
that call in here. Everything runs on one event loop; the control plane's `on_change` and the MQTT
handler (`LinkHandler`: `on_message`, `on_connected`, `to_reread`, `on_primed`, `on_lost`) are
plain synchronous callbacks.

- Informer change of a resource -> update the device index; re-mirror the devices it affects
  (spec, generation or device changed); enqueue its key.
- Device transition (tracker, from a message or the stale sweep) -> enqueue every resource of
  that device. A report -> enqueue only the keys whose reported entry changed. A heartbeat ->
  nothing (the tracker's fast path returns no change).
- A report or resource change is written at once when the report completes the change (its
  generation, no longer Pending), else after `settle` (intermediate states coalesce).
- A worker pops a key and runs `writing.StatusWriter.reconcile` (or the fleet controller's, for a
  fleet key): the status from the current state (`statuses.plan_status`), written only where it
  differs: one status patch and, on an `AgentConnected` reason change, one Event, each taking a
  token of the global write budget. A write spends one of the key's credits (a few at once, then
  one per `min_write_interval`).

Invariants: nothing is mirrored before the bridge is ready, while the link is not primed, or for a
device this replica may not write (`may_write`); a replay after a reconnect queues what it changed
once, when it is complete (`on_primed`); a `desired` document not read back within `ECHO_TIMEOUT`
is published again, and only documents a checked replay confirms missing are (`replaying`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

from devicefabric.bridge.controlplane.base import ControlPlane, Resource
from devicefabric.bridge.fleets import FleetController, is_fleet_key
from devicefabric.bridge.ingest import Ingest
from devicefabric.bridge.logrelay import LogRelay
from devicefabric.bridge.metrics import BridgeMetrics
from devicefabric.bridge.mirroring import Mirror, ResourceIndex
from devicefabric.bridge.mqtt import MqttLink
from devicefabric.bridge.queueing import Outcome, WorkQueue
from devicefabric.bridge.replaying import Expected, ReplayLedger, reread_topics
from devicefabric.bridge.statuses import write_delay
from devicefabric.bridge.tracking import Change, DeviceTracker, Transition
from devicefabric.bridge.writing import StatusWriter
from devicefabric.config.errors import DeviceFabricError
from devicefabric.config.topics import DeviceTopic, Topics
from devicefabric.config.wire import encode

if TYPE_CHECKING:
    from devicefabric.bridge.service import BridgeSettings

log = logging.getLogger("devicefabric.bridge")

ECHO_TIMEOUT: Final = 10.0  # s: a published desired not read back by then is published again
STATUS_SUFFIX: Final = "/status"
LOGS_REPLY_SUFFIX: Final = "/logs/reply"
REREAD_SYNC_WAIT: Final = 15.0  # s: re-reading the replay waits this long for the first list


class Dispatch:
    """The reacting half of the bridge; see the module docstring. `service.Bridge` sets every
    part named below before anything calls in."""

    _settings: BridgeSettings
    _control_plane: ControlPlane
    _topics: Topics
    _tracker: DeviceTracker
    _mirror: Mirror
    _index: ResourceIndex
    _ledger: ReplayLedger
    _ingest: Ingest
    _metrics: BridgeMetrics
    _queue: WorkQueue
    _link: MqttLink
    _logs: LogRelay
    _writer: StatusWriter
    _fleet: FleetController | None
    _ready: asyncio.Event  # latched: synced and primed once
    _primed: asyncio.Event
    _replayed: set[str]  # keys a replay changed, written once it is complete
    _rereading: list[tuple[str, DeviceTopic]]
    _resyncs: int  # full reconciliations started (each leadership gain)

    # -- full reconcile, queue outcomes ---------------------------------------------------------
    def _resync(self) -> None:
        self._resyncs += 1
        for device in set(self._index.devices()) | self._mirror.devices():
            self._mirror_device(device)
        for resource in self._control_plane.resources():
            self._queue.add(resource.key)
        if self._fleet is not None:
            for key in self._fleet.all_keys():
                self._queue.add(key)

    async def _reconcile(self, key: str) -> Outcome:
        if self._fleet is not None and is_fleet_key(key):
            return await self._fleet.reconcile(key)
        return await self._writer.reconcile(key)

    def _on_outcome(self, key: str, outcome: Outcome) -> None:
        if self._fleet is None:
            return
        if not is_fleet_key(key):
            if outcome is Outcome.WROTE:
                self._fleet.on_status_written(key)
        elif (delay := self._fleet.wakeup(key)) is not None:
            self._queue.add(key, delay=delay)

    def _enqueue_fleet(self, key: str, delay: float = 0.0) -> None:
        if self._ready.is_set():  # before: the first reconcile (`_resync`) queues every key
            self._queue.add(key, delay=delay)

    # -- control plane --------------------------------------------------------------------------
    def _on_resource(self, key: str) -> None:
        resource = self._control_plane.get(key)
        devices = self._index.update(key, resource)
        if resource is None:
            self._writer.forget(key)
            self._queue.forget(key)
        if self._fleet is not None:
            self._fleet.on_process(key, resource, devices)
        if not self._ready.is_set():
            return
        for device in devices:
            self._mirror_device(device)
        if resource is not None:
            self._queue.add(key, delay=self._write_delay(resource, resource.device))

    def _mirror_device(self, device: str) -> None:
        if not (
            self._ready.is_set() and self._link.primed and self._control_plane.may_write(device)
        ):
            return
        resources = [
            r
            for key in self._index.keys_of(device)
            if (r := self._control_plane.get(key)) is not None
        ]
        plan = self._mirror.plan(device, resources)
        for key in plan.refusals_changed:  # Synced=False/InvalidSpec appears or goes away
            self._queue.add(key)
        doc = plan.doc
        if doc is None:
            return
        if self._link.publish(self._topics.desired(device), encode(doc), retain=True):
            self._mirror.published(device, doc, time.monotonic())
            self._metrics.desired_published.inc()
            log.info(
                "published desired revision %s (%d processes)", doc.revision, len(doc.processes),
                extra={"device": device},
            )  # fmt: skip

    def _republish_unechoed(self) -> None:
        for device in self._mirror.expire_sent(time.monotonic(), ECHO_TIMEOUT):
            log.warning(
                "desired for %s not read back within %.0fs; publishing it again",
                device, ECHO_TIMEOUT, extra={"device": device},
            )  # fmt: skip
            self._mirror_device(device)

    # -- MQTT (LinkHandler) ---------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic.endswith(LOGS_REPLY_SUFFIX):  # a device's answer to a logs request of ours
            with contextlib.suppress(DeviceFabricError):
                device = self._topics.parse(topic).device
                if device is not None and not retained:
                    self._logs.on_reply(device, payload)
            return
        changes = self._ingest.feed(topic, payload, time.monotonic(), retained=retained)
        if changes:
            self._apply(changes)
        if self._fleet is not None and topic.endswith(STATUS_SUFFIX):  # a birth or a will
            with contextlib.suppress(DeviceFabricError):
                device = self._topics.parse(topic).device
                if device is not None:
                    self._fleet.on_device(device, transition=False)

    def on_connected(self) -> None:
        self._mirror.reset_sent()
        self._ledger.start()
        self._rereading = []

    async def to_reread(self) -> list[list[str]]:
        """The retained documents to re-read (`replaying`); what is expected is known only once
        the control plane has listed (waited for, at most `REREAD_SYNC_WAIT` s)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REREAD_SYNC_WAIT):
                await self._control_plane.synced.wait()
        if not self._control_plane.synced.is_set():
            log.warning(
                "the control plane has not listed after %.0fs: the retained replay is not checked "
                "(documents it lacks are published again once it has)", REREAD_SYNC_WAIT,
            )  # fmt: skip
            return []
        with_resources = frozenset(self._index.devices())
        expected = Expected(with_resources | self._mirror.devices(), with_resources)
        self._rereading = self._ledger.unseen(expected)
        return list(reread_topics(self._topics, self._rereading))

    def on_primed(self) -> None:
        self._tracker.resume(time.monotonic())
        if self._rereading:
            missing = self._ledger.confirm(self._rereading)
            for device in missing:  # not retained after all: `plan` publishes it again
                self._mirror.observe(device, None)
            log.info(
                "retained replay checked: %d expected documents had not arrived, %d re-read, "
                "%d missing (%d desired documents to publish)",
                len(self._rereading), self._ledger.reread - self._ledger.missing,
                self._ledger.missing, len(missing),
            )  # fmt: skip
            self._metrics.replay_reread.inc(len(self._rereading))
            self._metrics.replay_missing.inc(self._ledger.missing)
            self._rereading = []
        self._primed.set()
        replayed, self._replayed = self._replayed, set()
        for key in replayed:  # what the replay after a reconnect changed, once, all of it read
            self._queue.add(key)
        if self._ready.is_set():
            for device in set(self._index.devices()) | self._mirror.devices():
                self._mirror_device(device)

    def on_lost(self) -> None:
        """Nothing to undo: the sweep pauses (not primed) and the replay reconciles."""

    def _apply(self, changes: tuple[Change, ...] | list[Transition]) -> None:
        ready = self._ready.is_set()
        for change in changes:
            keys = self._index.keys_of(change.device)
            if isinstance(change, Transition):
                if self._fleet is not None:
                    self._fleet.on_device(change.device, transition=True)
                # A first sighting (previous None, e.g. the retained replay) is no transition.
                first = change.previous is None
                if not first:
                    self._metrics.transitions.labels(change.reason.value).inc()
                log.log(
                    logging.DEBUG if first else logging.INFO,
                    "device %s: %s", change.device, change.reason.value,
                    extra={"device": change.device, "session": change.session,
                           "reason": change.reason.value},
                )  # fmt: skip
            elif change.keys is not None:
                keys = keys & change.keys
            if ready and not self._link.primed:
                self._replayed.update(keys)  # a replay after a reconnect: one write at its end
            elif ready:
                transition = isinstance(change, Transition)
                for key in keys:
                    delay = (
                        0.0
                        if transition
                        else self._write_delay(self._control_plane.get(key), change.device)
                    )
                    self._queue.add(key, delay=delay)

    def _write_delay(self, resource: Resource | None, device: str | None) -> float:
        """At once when the report completes the change, else after the settle (`statuses`)."""
        known = self._tracker.get(device) if device is not None else None
        return write_delay(resource, known, self._settings.settle)
