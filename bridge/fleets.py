"""The fleet controller: Devices (inventory) and DeviceProcessSets (rollouts) on the write queue.

Its keys share the bridge's one keyed, rate-limited work queue with the DeviceProcess keys:
`device:<name>` and `set:<namespace>/<name>` (a DeviceProcess key has no `:`), so every write it
makes (a Device create or status patch, a set's process create/switch/delete, a set status patch)
takes a token of the same global budget. Both reconciles are level-based:

- `device:<name>`: create the Device on a birth when it is missing (`inventory.should_create`),
  else patch its status to what the tracker and the process index say (`inventory`), only where
  it differs. Queued by births and transitions, by changes of the processes targeting the device,
  and by changes of the Device object itself.
- `set:<ns>/<name>`: `rolling.plan_set` over the Devices the selector matches and the processes the
  set owns (by ownerReference uid, kept in an index fed by the DeviceProcess informer), then the
  writes it plans, then the status once no write was needed (the status describes a settled
  state, so a pass that wrote is followed by one that reads it back). Queued by changes of the
  set, of any Device, of any owned process (including its status, written by the bridge), and by
  every device transition (availability moves with connectivity).

Invariants: nothing is written unless `may_write` (the leader; with `--shards`, a device by its
shard's holder, every set by shard 0's holder, so each has one writer); a deleted set's processes are deleted here only where the store does
not collect garbage itself (local); a restart with everything settled writes nothing (every
status is compared with what is stored; availability of a device the bridge has not confirmed yet
falls back to the stored `AgentConnected` of its process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

from pydantic import ValidationError

from devicefabric.bridge.controlplane.base import (
    ControlPlane,
    FleetPlane,
    OwnedProcess,
    OwnerRef,
    Resource,
)
from devicefabric.bridge.errors import ConflictError
from devicefabric.bridge.inventory import plan_device_status, should_create
from devicefabric.bridge.mirroring import ResourceIndex
from devicefabric.bridge.queueing import Outcome
from devicefabric.bridge.rolling import Owned, SetPlan, SetView, is_available, plan_set
from devicefabric.bridge.statuses import parse_conditions
from devicefabric.bridge.tracking import DeviceTracker
from devicefabric.config.fleet import (
    DEVICE_KIND,
    SET_KIND,
    SET_LABEL,
    TEMPLATE_HASH_LABEL,
    DeviceProcessSetSpec,
    ProcessTemplate,
    owned_name,
    selector_matches,
    template_hash,
)
from devicefabric.config.resource import (
    AGENT_CONNECTED,
    Condition,
    Reason,
    make_condition,
    set_condition,
)
from devicefabric.runtime.clock import parse_rfc3339, rfc3339

log = logging.getLogger("devicefabric.bridge.fleets")

DEVICE_PREFIX: Final = "device:"
SWITCHED_AT: Final = "devicefabric.io/switched-at"  # annotation: when the set last wrote it
SET_PREFIX: Final = "set:"


def is_fleet_key(key: str) -> bool:
    return ":" in key


class FleetController:
    """Reconciles `device:` and `set:` keys; see the module doc."""

    def __init__(
        self,
        fleet: FleetPlane,
        processes: ControlPlane,
        tracker: DeviceTracker,
        index: ResourceIndex,
        *,
        acquire: Callable[[], Awaitable[None]],
        enqueue: Callable[..., None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.processes = processes
        self.tracker = tracker
        self.index = index
        self.acquire = acquire  # one token of the global write budget, before each write
        self.enqueue = enqueue  # (key, delay=0.0)
        self.clock = clock  # wall clock: switch times are stored (SWITCHED_AT) and outlive us
        self._failed: dict[str, str] = {}  # set uid -> the template hash whose rollout failed
        self._wakeups: dict[str, float] = {}  # set key -> s until a deadline of its passes
        self._created: dict[str, str] = {}  # device -> the session its Device was created for
        self._labels: dict[str, dict[str, str]] = {}  # device -> labels last seen
        self._owned: dict[str, dict[str, str]] = {}  # set uid -> device -> process key
        self._owner_of: dict[str, tuple[str, str]] = {}  # process key -> (set uid, device)
        self.writes = 0  # writes made (creates, updates, deletes, status patches)

    # -- what queues keys -----------------------------------------------------------------------
    def all_keys(self) -> list[str]:
        """Every key, for a full reconcile: each Device and device heard of, each set, and each
        set that is gone but still owns processes (deleted while no bridge ran)."""
        devices = {d.name for d in self.fleet.devices()} | set(self.tracker.names())
        sets = {SET_PREFIX + s.key for s in self.fleet.process_sets()}
        live = {s.uid for s in self.fleet.process_sets()}
        for key, (uid, _) in self._owner_of.items():
            process = self.processes.get(key)
            owner = _set_owner(process) if process is not None else None
            if uid not in live and owner is not None and process is not None:
                sets.add(f"{SET_PREFIX}{process.namespace}/{owner.name}")
        return [DEVICE_PREFIX + d for d in sorted(devices)] + sorted(sets)

    def _sets(self) -> None:
        for s in self.fleet.process_sets():
            self.enqueue(SET_PREFIX + s.key)

    def on_fleet(self, kind: str, key: str) -> None:
        """A Device or a DeviceProcessSet changed (the fleet informer)."""
        if kind == SET_KIND:
            self.enqueue(SET_PREFIX + key)
            return
        if kind != DEVICE_KIND:
            return
        device = self.fleet.device(key)
        labels = dict(device.labels) if device is not None else {}
        if self._labels.get(key) != labels:
            self._labels[key] = labels
            self._sets()  # a selector may match it now, or no longer
        self.enqueue(DEVICE_PREFIX + key)

    def on_device(self, name: str, *, transition: bool) -> None:
        """A birth, will or timeout of `name` (the tracker)."""
        self.enqueue(DEVICE_PREFIX + name)
        if transition:
            self._sets()

    def on_process(self, key: str, resource: Resource | None, devices: Iterable[str]) -> None:
        """A DeviceProcess changed (`devices`: whose process count may have moved)."""
        for device in devices:
            self.enqueue(DEVICE_PREFIX + device)
        previous = self._owner_of.pop(key, None)
        if previous is not None:
            owned = self._owned.get(previous[0], {})
            if owned.get(previous[1]) == key:
                del owned[previous[1]]
        owner = _set_owner(resource) if resource is not None else None
        if owner is not None and resource is not None and resource.device is not None:
            self._owned.setdefault(owner.uid, {})[resource.device] = key
            self._owner_of[key] = (owner.uid, resource.device)
        for uid in {previous[0] if previous else None, owner.uid if owner else None} - {None}:
            self._enqueue_set_by_uid(str(uid), resource)

    def on_status_written(self, key: str) -> None:
        """The bridge wrote a process's status (availability may have moved)."""
        owner = self._owner_of.get(key)
        if owner is not None:
            self._enqueue_set_by_uid(owner[0], self.processes.get(key))

    def _enqueue_set_by_uid(self, uid: str, resource: Resource | None) -> None:
        if resource is not None:
            for ref in resource.owners:
                if ref.uid == uid and ref.kind == SET_KIND:
                    self.enqueue(f"{SET_PREFIX}{resource.namespace}/{ref.name}")
                    return
        for s in self.fleet.process_sets():  # the process is gone: find its set by uid
            if s.uid == uid:
                self.enqueue(SET_PREFIX + s.key)

    def wakeup(self, key: str) -> float | None:
        """After `key`'s pass: in how many seconds to look at it again (a progress deadline),
        if any. Asked by the service once the pass is done: a key added while in flight would
        run again at once, not at the deadline."""
        return self._wakeups.pop(key, None)

    # -- reconcile ------------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Outcome:
        if key.startswith(DEVICE_PREFIX):
            return await self._device(key.removeprefix(DEVICE_PREFIX))
        return await self._set(key.removeprefix(SET_PREFIX))

    async def _write(self, what: Awaitable[None]) -> None:
        await self.acquire()
        await what
        self.writes += 1

    async def _device(self, name: str) -> Outcome:
        if not self.processes.may_write(name):
            return Outcome.DONE
        known = self.tracker.get(name)
        obj = self.fleet.device(name)
        if obj is None:
            return await self._create_device(name)
        if known is not None and known.reason is None and not obj.status.get("conditions"):
            # Known from a retained birth only: its first status waits for the heartbeat that
            # confirms it (or the timeout that does not), and then is one write, not two.
            return Outcome.DONE
        processes = len(self.index.keys_of(name))
        patch = plan_device_status(known, processes, obj.status, rfc3339())
        if patch is None:
            return Outcome.DONE
        await self._write(self.fleet.patch_device_status(name, patch))
        log.info("device status written (%s)", ", ".join(sorted(patch)), extra={"device": name})
        return Outcome.WROTE

    async def _create_device(self, name: str) -> Outcome:
        known = self.tracker.get(name)
        if known is None or not should_create(known, self._created.get(name), exists=False):
            return Outcome.DONE
        self._created[name] = known.session or ""
        try:
            await self._write(self.fleet.create_device(name))
        except ConflictError:
            return Outcome.DONE  # an operator's, listed soon: its status follows then
        log.info("device created", extra={"device": name})
        self.enqueue(DEVICE_PREFIX + name)  # its status, once it is in the cache
        return Outcome.WROTE

    async def _set(self, key: str) -> Outcome:
        if not self.processes.may_write(SET_PREFIX + key):
            return Outcome.DONE
        obj = self.fleet.process_set(key)
        if obj is None:
            return await self._collect(key)
        try:
            spec = DeviceProcessSetSpec.model_validate(obj.spec)
        except ValidationError as exc:  # the CRD schema and `apply` validate; a guard only
            log.warning("invalid DeviceProcessSet spec: %s", exc, extra={"resource": key})
            return Outcome.DONE
        view = self._view(obj, spec)
        plan = plan_set(view)
        if plan.failed_revision is None:
            self._failed.pop(obj.uid, None)  # a new template: the failure is history
        elif view.failed_revision != plan.failed_revision:
            # A rollout just failed: that is recorded before anything moves (the failure must
            # outlive the rollback that takes the failed devices off the template).
            self._failed[obj.uid] = plan.failed_revision
            await self._write_status(obj, spec, plan)
        wrote = await self._carry_out(obj, spec, view, plan)
        if wrote:
            return Outcome.WROTE  # the status follows on the pass the writes queue
        return Outcome.WROTE if await self._write_status(obj, spec, plan) else Outcome.DONE

    async def _write_status(self, obj: Resource, spec: DeviceProcessSetSpec, plan: SetPlan) -> bool:
        patch = _set_status_patch(obj, spec, plan, rfc3339())
        if patch is None:
            return False
        await self._write(self.fleet.patch_set_status(obj.key, patch))
        log.info(
            "set status written: %s", " ".join(f"{k}={v}" for k, v in plan.counts.items()),
            extra={"resource": obj.key, "reason": plan.progressing.value},
        )  # fmt: skip
        return True

    def _view(self, obj: Resource, spec: DeviceProcessSetSpec) -> SetView:
        selected = [
            d.name for d in self.fleet.devices() if selector_matches(spec.selector, d.labels)
        ]
        owned: dict[str, Owned] = {}
        deadline = spec.update_strategy.rolling_update.progress_deadline_seconds
        now = self.clock()
        wake: float | None = None
        for device, pkey in self._owned.get(obj.uid, {}).items():
            process = self.processes.get(pkey)
            if process is None:
                continue
            status = process.status
            connected = self._connected(device, process)
            at_generation = status.get("observedGeneration") == process.generation
            available = is_available(
                status.get("phase"), status.get("observedGeneration"), process.generation, connected
            )
            since = _switched_at(process, now)
            crashing = at_generation and status.get("phase") in CRASHING
            late = now - since >= deadline
            if connected and not available and not late and not crashing:
                left = since + deadline - now
                wake = left if wake is None else min(wake, left)
            owned[device] = Owned(
                key=pkey,
                device=device,
                template_hash=process.labels.get(TEMPLATE_HASH_LABEL, ""),
                available=available,
                failed=connected and not available and (late or crashing),
            )
        if wake is not None:  # a deadline to come: look again then (queued once this pass ends)
            self._wakeups[SET_PREFIX + obj.key] = max(wake, 0.0) + DEADLINE_SLACK
        conflicts = [
            d
            for d in selected
            if d not in owned
            and self.processes.get(f"{obj.namespace}/{owned_name(obj.name, d)}") is not None
        ]
        status = obj.status
        stable, failed = status.get("stableRevision"), status.get("failedRevision")
        if not isinstance(failed, str):  # written, but the cache may not show it yet
            failed = self._failed.get(obj.uid)
        return SetView(
            spec,
            template_hash(spec.template),
            selected,
            owned,
            conflicts,
            stable_hash=stable if isinstance(stable, str) and _template(status) else None,
            failed_revision=failed if isinstance(failed, str) else None,
        )

    def _connected(self, device: str, process: Resource) -> bool:
        known = self.tracker.get(device)
        if known is not None and known.reason is not None:
            return known.reason is Reason.CONNECTED
        for cond in parse_conditions(process.status.get("conditions")):
            if cond.type == AGENT_CONNECTED:
                return cond.status == "True"
        return False

    async def _carry_out(
        self, obj: Resource, spec: DeviceProcessSetSpec, view: SetView, plan: SetPlan
    ) -> bool:
        labels = {SET_LABEL: obj.name, TEMPLATE_HASH_LABEL: plan.target}
        owner = OwnerRef(SET_KIND, obj.name, obj.uid)
        template = spec.template if plan.target == view.template_hash else _template(obj.status)
        if template is None:  # pragma: no cover - a stable hash is used only with its template
            return False
        wrote = False
        for device in plan.create:
            name = owned_name(obj.name, device)
            try:
                await self._write(
                    self.fleet.create_process(
                        obj.namespace,
                        name,
                        OwnedProcess(template.for_device(device), labels, {SWITCHED_AT: rfc3339()}),
                        owner,
                    )
                )
            except ConflictError:
                continue  # taken meanwhile: a conflict on the next pass
            wrote = True
            log.info(
                "process created for %s", device, extra={"resource": obj.key, "device": device}
            )
        for device in plan.update:
            pkey = view.owned[device].key
            await self._write(
                self.fleet.update_process(
                    pkey,
                    OwnedProcess(template.for_device(device), labels, {SWITCHED_AT: rfc3339()}),
                )
            )
            wrote = True
            log.info("process %s switched to the current template", pkey,
                     extra={"resource": obj.key, "device": device})  # fmt: skip
        for pkey in plan.delete:
            await self._write(self.fleet.delete_process(pkey))
            wrote = True
            log.info("process %s deleted: its device is no longer selected", pkey,
                     extra={"resource": obj.key})  # fmt: skip
        return wrote

    async def _collect(self, key: str) -> Outcome:
        """The set is gone: without a garbage collector, delete what it owned."""
        if self.fleet.collects_garbage:
            return Outcome.DROP
        namespace, _, name = key.partition("/")
        live = {s.uid for s in self.fleet.process_sets()}
        orphans = [
            pkey
            for uid, owned in self._owned.items()
            if uid not in live
            for pkey in owned.values()
            if pkey.startswith(namespace + "/")
            and (p := self.processes.get(pkey)) is not None
            and p.labels.get(SET_LABEL) == name
        ]
        for pkey in orphans:
            await self._write(self.fleet.delete_process(pkey))
            log.info("process %s deleted with its set", pkey, extra={"resource": key})
        return Outcome.WROTE if orphans else Outcome.DROP


def _set_owner(resource: Resource) -> OwnerRef | None:
    return next((ref for ref in resource.owners if ref.kind == SET_KIND), None)


def _switched_at(process: Resource, now: float) -> float:
    """When the set last wrote `process` (its SWITCHED_AT annotation; else its creation), as
    seconds since the epoch: a deadline survives a bridge restart and a leader change."""
    for text in (process.annotations.get(SWITCHED_AT, ""), process.creation_timestamp):
        when = parse_rfc3339(text)
        if when is not None:
            return when.timestamp()
    return now


def _template(status: Mapping[str, object]) -> ProcessTemplate | None:
    """The stable template kept in the set's status (for a rollback and `rollout undo`)."""
    raw = status.get("stableTemplate")
    if not isinstance(raw, dict):
        return None
    try:
        return ProcessTemplate.model_validate(raw)
    except ValidationError:
        return None


def _set_status_patch(
    obj: Resource, spec: DeviceProcessSetSpec, plan: SetPlan, now: str
) -> dict[str, object] | None:
    stored = obj.status
    want: dict[str, object] = dict(plan.counts)
    want["observedGeneration"] = obj.generation
    want["updateRevision"] = template_hash(spec.template)
    if plan.failed_revision is not None:
        want["failedRevision"] = plan.failed_revision
    if plan.stable_hash is not None:
        want["stableRevision"] = plan.stable_hash
        if plan.stable_hash == want["updateRevision"]:
            want["stableTemplate"] = spec.template.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        elif "stableTemplate" in stored:
            want["stableTemplate"] = stored["stableTemplate"]
    conditions: list[Condition] = parse_conditions(stored.get("conditions"))
    for ctype, reason in plan.conditions:
        conditions = set_condition(conditions, make_condition(ctype, reason, now))
    want["conditions"] = [c.model_dump(mode="json", by_alias=True) for c in conditions]
    patch: dict[str, object] = {k: v for k, v in want.items() if stored.get(k) != v}
    if "failedRevision" in stored and "failedRevision" not in want:
        patch["failedRevision"] = None  # a new template: the old failure is history
    return patch or None


CRASHING: Final = frozenset({"Failed", "CrashLoopBackOff"})
DEADLINE_SLACK: Final = 0.05  # s past a deadline before looking again
