"""A Device's status, pure: (what the bridge knows of the device, its process count) -> a patch.

`plan_device_status` derives the status a Device should have now and diffs it against what is
stored, returning the minimal merge patch (None deletes a field) or None when nothing differs:
- `Connected` (reasons as `AgentConnected`: Connected, ConnectionLost, Shutdown, HeartbeatTimeout,
  with their fixed messages), `lastTransitionTime` kept unless its status changes;
- `session` (the latest, from a birth or a will) and, once a birth was seen, `heartbeatSeconds`,
  `agentVersion` and the device facts (`config.fleet.FACT_FIELDS`; a birth without a fact clears
  it);
- `processes`: how many DeviceProcesses target the device.

Like `statuses`, what the bridge does not know it does not touch: a device known only from the
retained replay (no confirmed connection state) keeps its stored condition; one never heard of
keeps its stored birth fields. There is no lastSeen: it would be a write per heartbeat.

`should_create` is the one-create-per-birth rule: a Device is created when a birth was seen (live
or retained), no Device exists, and none was created for that session already, so an operator who
deletes the Device of a connected device sees it again at the device's next birth, not at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from devicefabric.bridge.statuses import parse_conditions
from devicefabric.bridge.tracking import Device
from devicefabric.config.fleet import CONNECTED, FACT_FIELDS
from devicefabric.config.resource import make_condition, set_condition


def desired_device_status(
    device: Device | None, processes: int, stored: Mapping[str, object], now: str
) -> dict[str, object]:
    """The status the Device should have now (fields the bridge does not know kept as stored)."""
    want: dict[str, object] = dict(stored)
    want["processes"] = processes
    if device is None:
        return want
    if device.reason is not None:
        conditions = parse_conditions(stored.get("conditions"))
        updated = set_condition(conditions, make_condition(CONNECTED, device.reason, now))
        want["conditions"] = [c.model_dump(mode="json", by_alias=True) for c in updated]
    if device.session is not None:
        want["session"] = device.session
    if device.born is not None:  # a birth seen (a will alone says nothing of these)
        want["heartbeatSeconds"] = device.heartbeat_s
        if device.agent:
            want["agentVersion"] = device.agent
        else:
            want.pop("agentVersion", None)
        for _, field in FACT_FIELDS:
            if field in device.facts:
                want[field] = device.facts[field]
            else:
                want.pop(field, None)
    return want


def plan_device_status(
    device: Device | None, processes: int, stored: Mapping[str, object], now: str
) -> dict[str, object] | None:
    """The merge patch from `stored` to the desired status, or None when they are equal."""
    want = desired_device_status(device, processes, stored, now)
    patch: dict[str, object] = {k: v for k, v in want.items() if stored.get(k) != v}
    patch.update({k: None for k in stored if k not in want})
    return patch or None


def should_create(device: Device | None, created_for: str | None, *, exists: bool) -> bool:
    """True when a Device must be created now (see the module doc)."""
    if exists or device is None or device.session is None:
        return False
    return created_for != device.session
