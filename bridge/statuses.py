"""Status computation: (resource, what the bridge knows of its device) -> the minimal merge patch.

Pure and level-based: `plan_status` derives the status a resource should have *now* from
- its spec and generation (`InvalidSpec` when the spec does not validate),
- the device's connection reason (`AgentConnected`),
- the device's last report entry for this resource (`phase`, `pid`, `restarts`, `exitCode`,
  `startedAt`, `message`, `observedGeneration`; `Synced` is `Applied` when the reported generation
  is the resource's generation, `Pending` otherwise),
then diffs it against the stored status and returns a `StatusPlan` (merge patch + Event) or None.

What the bridge does not know, it does not touch: with no report ever received from the device the
process fields are left as stored (and `Synced` follows the stored `observedGeneration`); with no
confirmed connection state (a device never heard of, or known only from a retained replay) the
`AgentConnected` condition is left as stored. That is what makes a bridge restart write nothing.

Conditions keep their `lastTransitionTime` unless their `status` changes (`set_condition`) and
carry the fixed message of their reason, so recomputing an unchanged state yields an identical
status and no write. An Event is planned when the stored `AgentConnected` reason changes: one per
resource per device transition, `Normal` when connecting, `Warning` when disconnecting. A resource
that gets the condition for the first time gets the `Normal` Event when its device connects, and
none when its device is already known to be away (nothing transitioned).

`write_delay` decides when a key queued by a report or a resource change is written: at once when
the device's report completes the change (its entry is at the resource's generation and no longer
`Pending`; that write is the change's one write), else after the settle, so the intermediate
states of a spec change (`Synced=Pending`, phase `Pending`) coalesce and are never written when
the completing report arrives within the settle (the earlier due time wins in the queue).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError

from devicefabric.bridge.controlplane.base import EventType, Resource
from devicefabric.bridge.mirroring import check_spec
from devicefabric.bridge.tracking import Device
from devicefabric.config import lean
from devicefabric.config.resource import (
    AGENT_CONNECTED,
    SYNCED,
    Condition,
    Reason,
    find_condition,
    make_condition,
    set_condition,
)
from devicefabric.config.wire import ProcessReport

# The status fields taken from the report (`conditions` is handled on its own), by report field.
PROCESS_FIELDS: Final = {f.name: f.status for f in lean.PROCESS_FIELDS}
PENDING_PHASE: Final = "Pending"
OWN_ORDER: Final = {AGENT_CONNECTED: 0, SYNCED: 1}


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class StatusPlan:
    """A merge patch of `status` (None values delete) and the Event to record with it."""

    patch: dict[str, object]
    event: PlannedEvent | None
    reason: str | None  # the AgentConnected reason after the patch (for logs)


def parse_conditions(raw: object) -> list[Condition]:
    """Stored conditions; entries that are not conditions are dropped (they will be rewritten)."""
    if not isinstance(raw, list):
        return []
    out: list[Condition] = []
    for item in raw:
        try:
            out.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return out


def _process_fields(entry: ProcessReport | None) -> dict[str, object | None]:
    if entry is None:
        fields: dict[str, object | None] = dict.fromkeys(PROCESS_FIELDS.values())
        fields[PROCESS_FIELDS["phase"]] = PENDING_PHASE
        return fields
    return {status: getattr(entry, name) for name, status in PROCESS_FIELDS.items()}


def desired_fields(
    resource: Resource, stored: Mapping[str, object], device: Device | None
) -> dict[str, object | None]:
    """The process fields the status should carry (stored ones when no report is known)."""
    if device is None or device.report is None:
        return {name: stored.get(name) for name in PROCESS_FIELDS.values()}
    return _process_fields(device.report.processes.get(resource.key))


def desired_conditions(
    resource: Resource,
    stored_conditions: list[Condition],
    observed_generation: object,
    device: Device | None,
    now: str,
    *,
    rejected: str | None = None,
) -> list[Condition]:
    spec = check_spec(resource.spec)
    if isinstance(spec, str):
        synced = make_condition(SYNCED, Reason.INVALID_SPEC, now, detail=spec)
    elif rejected is not None:  # valid alone, but mirroring cannot send it (see `mirroring`)
        synced = make_condition(SYNCED, Reason.INVALID_SPEC, now, detail=rejected)
    elif observed_generation == resource.generation:
        synced = make_condition(SYNCED, Reason.APPLIED, now)
    else:
        synced = make_condition(SYNCED, Reason.PENDING, now)
    conditions = stored_conditions
    if device is not None and device.reason is not None:
        conditions = set_condition(conditions, make_condition(AGENT_CONNECTED, device.reason, now))
    conditions = set_condition(conditions, synced)
    # A stable order whatever came first: ours (AgentConnected, Synced), then any foreign ones.
    return sorted(conditions, key=lambda c: OWN_ORDER.get(c.type, len(OWN_ORDER)))


def completes(resource: Resource, device: Device | None) -> bool:
    """Whether the device's report completes the resource's current generation: its entry is at
    that generation and its phase is no longer `Pending` (Running, Succeeded, Failed, ...)."""
    if device is None or device.report is None:
        return False
    entry = device.report.processes.get(resource.key)
    return (
        entry is not None
        and entry.generation == resource.generation
        and str(entry.phase) != PENDING_PHASE
    )


def write_delay(resource: Resource | None, device: Device | None, settle: float) -> float:
    """Seconds before the write of a key queued by a report or a resource change: 0 when the
    report completes the change (see `completes`), else `settle` (an intermediate state)."""
    if resource is not None and completes(resource, device):
        return 0.0
    return settle


def _event(before: Condition | None, after: Condition | None) -> PlannedEvent | None:
    if after is None or (before is not None and before.reason == after.reason):
        return None
    if before is None and after.status != "True":
        return None  # a new resource of a device already known to be away: nothing transitioned
    kind: EventType = "Normal" if after.status == "True" else "Warning"
    return PlannedEvent(kind, after.reason, after.message)  # our own: `make_condition`


def plan_status(
    resource: Resource,
    device: Device | None,
    now: str,
    stored: Mapping[str, object] | None = None,
    rejected: str | None = None,
) -> StatusPlan | None:
    """The patch taking `stored` (default: `resource.status`) to the status it should have.

    `rejected`: why mirroring does not send this resource (`Mirror.rejected`), if it does not.
    """
    stored = resource.status if stored is None else stored
    fields = desired_fields(resource, stored, device)
    stored_conditions = parse_conditions(stored.get("conditions"))
    conditions = desired_conditions(
        resource, stored_conditions, fields["observedGeneration"], device, now, rejected=rejected
    )
    patch: dict[str, object] = {
        name: value for name, value in fields.items() if stored.get(name) != value
    }
    wire = [c.model_dump(mode="json", by_alias=True) for c in conditions]
    if stored.get("conditions") != wire:
        patch["conditions"] = wire
    if not patch:
        return None
    after = find_condition(conditions, AGENT_CONNECTED)
    event = _event(find_condition(stored_conditions, AGENT_CONNECTED), after)
    return StatusPlan(patch, event, after.reason if after is not None else None)
