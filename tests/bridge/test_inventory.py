"""Tier 1: a Device's status and the one-create-per-birth rule (`bridge.inventory`), as tables."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from devicefabric.bridge.inventory import plan_device_status, should_create
from devicefabric.bridge.tracking import Device
from devicefabric.config.resource import Reason

NOW, LATER = "2026-12-05T10:00:00Z", "2026-12-05T11:00:00Z"


def device(
    reason: Reason | None = Reason.CONNECTED, session: str | None = "s1", **kw: Any
) -> Device:
    kw.setdefault("born", session)  # a birth seen for the session, unless the test says not
    return Device("d1", session=session, reason=reason, heartbeat_s=15, agent="0.1.0", **kw)


def connected(reason: str = "Connected", status: str = "True", at: str = NOW) -> dict[str, Any]:
    messages = {
        "Connected": "The device agent is connected.",
        "ConnectionLost": "The device agent's connection was lost (the broker fired its will).",
    }
    return {
        "type": "Connected",
        "status": status,
        "reason": reason,
        "message": messages[reason],
        "lastTransitionTime": at,
    }


SETTLED = {
    "conditions": [connected()],
    "session": "s1",
    "heartbeatSeconds": 15,
    "agentVersion": "0.1.0",
    "processes": 2,
}


@pytest.mark.parametrize(
    ("known", "processes", "stored", "patch"),
    [
        # first status of a new Device: everything the birth said
        (device(), 0, {}, {**SETTLED, "processes": 0}),
        # nothing changed (a heartbeat, a restart of the bridge): no write
        (device(), 2, SETTLED, None),
        # one more process on the device: that field only
        (device(), 3, SETTLED, {"processes": 3}),
        # the will: the condition changes, with a new transition time
        (
            device(Reason.CONNECTION_LOST),
            2,
            SETTLED,
            {"conditions": [connected("ConnectionLost", "False", LATER)]},
        ),
        # a new session (reconnect): session only, the condition keeps its time
        (device(session="s2"), 2, SETTLED, {"session": "s2"}),
        # known only from the retained replay: the stored condition is kept
        (device(reason=None), 2, SETTLED, None),
        # never heard of: only the count is the bridge's to say
        (None, 2, SETTLED, None),
        (None, 1, SETTLED, {"processes": 1}),
    ],
)
def test_plan_device_status(
    known: Device | None,
    processes: int,
    stored: dict[str, Any],
    patch: dict[str, Any] | None,
) -> None:
    assert plan_device_status(known, processes, stored, LATER if stored else NOW) == patch


def test_birth_facts_are_written_and_cleared_by_a_birth_without_them() -> None:
    facts = {"arch": "x86_64", "cpus": 2}
    known = device(facts=MappingProxyType(facts))
    assert plan_device_status(known, 2, SETTLED, LATER) == facts
    bare = device()
    assert plan_device_status(bare, 2, {**SETTLED, **facts}, LATER) == {"arch": None, "cpus": None}


def test_a_will_alone_does_not_unsay_what_a_birth_said() -> None:
    """A bridge that saw only the retained will (it started after the birth) writes the
    condition, and keeps the birth's fields a replica before it wrote."""
    known = device(Reason.CONNECTION_LOST, born=None)
    known.heartbeat_s, known.agent = 15, ""
    stored = {**SETTLED, "heartbeatSeconds": 600, "agentVersion": "sim"}
    patch = plan_device_status(known, 2, stored, LATER)
    assert patch == {"conditions": [connected("ConnectionLost", "False", LATER)]}


@pytest.mark.parametrize(
    ("known", "exists", "created_for", "expected"),
    [
        (device(), False, None, True),  # first birth: create
        (device(), True, None, False),  # exists (an operator's, or ours)
        (device(), False, "s1", False),  # deleted by an operator: not before the next birth
        (device(session="s2"), False, "s1", True),  # the next birth
        (device(session=None), False, None, False),  # no birth seen yet
        (None, False, None, False),
    ],
)
def test_should_create(
    known: Device | None, exists: bool, created_for: str | None, expected: bool
) -> None:
    assert should_create(known, created_for, exists=exists) is expected
