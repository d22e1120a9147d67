"""Tier 1: status computation is level-based, minimal, and quiet when nothing changed."""

from __future__ import annotations

from typing import Any

import pytest

from devicefabric.bridge.statuses import (
    PlannedEvent,
    completes,
    plan_status,
    write_delay,
)
from devicefabric.bridge.tracking import Device
from devicefabric.config.mergepatch import merge_patch
from devicefabric.config.resource import Reason
from devicefabric.config.wire import ProcessReport, Report
from tests.support.memoryplane import resource

KEY = "default/web"
T0 = "2024-01-01T00:00:00Z"
T1 = "2024-01-01T00:01:00Z"


def device(reason: Reason | None, **entries: dict[str, Any]) -> Device:
    dev = Device("tor9-99", session="s1", reason=reason)
    if entries:
        dev.report = Report(
            session="s1",
            seq=1,
            revision="r",
            processes={
                f"default/{name}": ProcessReport.model_validate(entry)
                for name, entry in entries.items()
            },
        )
    return dev


RUNNING = {"generation": 1, "phase": "Running", "pid": 42, "restarts": 0}


def settle(
    res_status: dict[str, object], dev: Device | None, generation: int = 1
) -> dict[str, object]:
    """The status after the bridge wrote whatever it planned at T0."""
    res = resource("web", "tor9-99", generation=generation, status=res_status)
    plan = plan_status(res, dev, T0)
    return res_status if plan is None else merge_patch(res_status, plan.patch)


def test_first_status_of_a_running_resource() -> None:
    res = resource("web", "tor9-99")
    plan = plan_status(res, device(Reason.CONNECTED, web=RUNNING), T0)
    assert plan is not None
    assert plan.patch == {
        "observedGeneration": 1,
        "phase": "Running",
        "pid": 42,
        "restarts": 0,
        "conditions": [
            {
                "type": "AgentConnected",
                "status": "True",
                "reason": "Connected",
                "message": "The device agent is connected.",
                "lastTransitionTime": T0,
            },
            {
                "type": "Synced",
                "status": "True",
                "reason": "Applied",
                "message": "The device runs the current generation of this resource.",
                "lastTransitionTime": T0,
            },
        ],
    }
    # The device's first connection is a connect transition for the resource.
    assert plan.event == PlannedEvent("Normal", "Connected", "The device agent is connected.")


def test_recomputing_an_unchanged_state_writes_nothing_even_later() -> None:
    dev = device(Reason.CONNECTED, web=RUNNING)
    status = settle({}, dev)
    res = resource("web", "tor9-99", status=status)
    assert plan_status(res, dev, T1) is None


def test_disconnect_patches_only_the_condition_and_plans_one_warning() -> None:
    status = settle({}, device(Reason.CONNECTED, web=RUNNING))
    res = resource("web", "tor9-99", status=status)
    plan = plan_status(res, device(Reason.CONNECTION_LOST, web=RUNNING), T1)
    assert plan is not None
    assert list(plan.patch) == ["conditions"]
    conditions: Any = plan.patch["conditions"]
    assert conditions[0]["reason"] == "ConnectionLost"
    assert conditions[0]["lastTransitionTime"] == T1
    assert conditions[1]["lastTransitionTime"] == T0  # Synced did not change
    assert plan.event is not None
    assert (plan.event.type, plan.event.reason) == ("Warning", "ConnectionLost")


def test_reason_change_with_equal_status_keeps_the_transition_time() -> None:
    status = settle({}, device(Reason.CONNECTION_LOST, web=RUNNING))
    res = resource("web", "tor9-99", status=status)
    plan = plan_status(res, device(Reason.HEARTBEAT_TIMEOUT, web=RUNNING), T1)
    assert plan is not None
    conditions: Any = plan.patch["conditions"]
    assert (conditions[0]["reason"], conditions[0]["lastTransitionTime"]) == (
        "HeartbeatTimeout",
        T0,
    )
    assert plan.event is not None
    assert plan.event.type == "Warning"


def test_reconnect_plans_a_normal_event() -> None:
    status = settle({}, device(Reason.CONNECTION_LOST, web=RUNNING))
    res = resource("web", "tor9-99", status=status)
    plan = plan_status(res, device(Reason.CONNECTED, web=RUNNING), T1)
    assert plan is not None
    assert plan.event is not None
    assert (plan.event.type, plan.event.reason) == ("Normal", "Connected")


def test_unconfirmed_device_keeps_the_stored_connection_condition() -> None:
    status = settle({}, device(Reason.HEARTBEAT_TIMEOUT, web=RUNNING))
    res = resource("web", "tor9-99", status=status)
    assert plan_status(res, device(None, web=RUNNING), T1) is None


def test_unknown_device_and_no_report_touch_nothing_but_synced() -> None:
    status = settle({}, device(Reason.CONNECTED, web=RUNNING))
    res = resource("web", "tor9-99", status=status)
    assert plan_status(res, None, T1) is None  # e.g. right after a bridge restart
    res2 = resource("web", "tor9-99", status=status, generation=2)
    plan = plan_status(res2, None, T1)
    assert plan is not None
    conditions: Any = plan.patch["conditions"]
    assert list(plan.patch) == ["conditions"]
    assert conditions[1]["reason"] == "Pending"


def test_report_change_writes_only_changed_fields() -> None:
    dev = device(Reason.CONNECTED, web=RUNNING)
    status = settle({}, dev)
    res = resource("web", "tor9-99", status=status)
    crashed = {
        "generation": 1,
        "phase": "CrashLoopBackOff",
        "restarts": 3,
        "exitCode": 1,
        "message": "boom",
    }
    plan = plan_status(res, device(Reason.CONNECTED, web=crashed), T1)
    assert plan is not None
    assert plan.patch == {
        "phase": "CrashLoopBackOff",
        "pid": None,
        "restarts": 3,
        "exitCode": 1,
        "message": "boom",
    }
    assert plan.event is None


def test_new_generation_is_pending_until_reported() -> None:
    dev = device(Reason.CONNECTED, web=RUNNING)
    status = settle({}, dev)
    res = resource("web", "tor9-99", status=status, generation=2)
    plan = plan_status(res, dev, T1)
    assert plan is not None
    conditions: Any = plan.patch["conditions"]
    assert (conditions[1]["reason"], conditions[1]["lastTransitionTime"]) == ("Pending", T1)
    status2 = merge_patch(status, plan.patch)
    reported = device(Reason.CONNECTED, web={**RUNNING, "generation": 2})
    plan2 = plan_status(resource("web", "tor9-99", status=status2, generation=2), reported, T1)
    assert plan2 is not None
    assert plan2.patch["observedGeneration"] == 2


def test_no_entry_in_the_report_is_pending() -> None:
    plan = plan_status(resource("web", "tor9-99"), device(Reason.CONNECTED, other=RUNNING), T0)
    assert plan is not None
    assert plan.patch["phase"] == "Pending"
    assert "pid" not in plan.patch  # absent and unset: nothing to delete


def test_invalid_spec_is_reported_on_the_resource_with_a_stable_message() -> None:
    spec: dict[str, Any] = {"deviceName": "tor9-99", "command": []}
    res = resource("web", "tor9-99", spec=spec)
    plan = plan_status(res, device(Reason.CONNECTED), T0)
    assert plan is not None
    conditions: Any = plan.patch["conditions"]
    synced = conditions[-1]
    assert (synced["status"], synced["reason"]) == ("False", "InvalidSpec")
    assert "spec.command" in synced["message"]
    settled = merge_patch({}, plan.patch)
    again = resource("web", "tor9-99", spec=spec, status=settled)
    assert plan_status(again, device(Reason.CONNECTED), T1) is None


def test_foreign_conditions_are_kept() -> None:
    foreign = {
        "type": "Audited",
        "status": "True",
        "reason": "Ok",
        "message": "m",
        "lastTransitionTime": T0,
    }
    plan = plan_status(resource("web", "tor9-99", status={"conditions": [foreign]}), None, T0)
    assert plan is not None
    conditions: Any = plan.patch["conditions"]
    assert conditions[-1] == foreign


def test_condition_order_is_stable_whatever_came_first() -> None:
    status = settle({}, None)  # device unknown: only Synced
    res = resource("web", "tor9-99", status=status)
    plan = plan_status(res, device(Reason.CONNECTED), T1)
    assert plan is not None
    conditions: Any = plan.patch["conditions"]
    assert [c["type"] for c in conditions] == ["AgentConnected", "Synced"]


SETTLE = 0.05


@pytest.mark.parametrize(
    ("why", "generation", "dev", "delay"),
    [
        ("the running report of the new generation", 2, {"generation": 2, "phase": "Running"}, 0),
        ("a success at the new generation completes it", 2, {"generation": 2, "phase": "Succeeded"}, 0),
        ("a crash loop at the new generation completes it", 2, {"generation": 2, "phase": "CrashLoopBackOff"}, 0),
        ("a failure at the new generation completes it", 2, {"generation": 2, "phase": "Failed"}, 0),
        ("Pending at the new generation is intermediate", 2, {"generation": 2, "phase": "Pending"}, SETTLE),
        ("the old generation still running (spec changed)", 2, {"generation": 1, "phase": "Running"}, SETTLE),
        ("a report from a newer generation than cached", 1, {"generation": 2, "phase": "Running"}, SETTLE),
        ("no entry for this resource in the report", 1, {}, SETTLE),
        ("no report from the device yet", 1, None, SETTLE),
        ("a device never heard of", 1, "unknown", SETTLE),
    ],
)  # fmt: skip
def test_write_delay(
    why: str, generation: int, dev: dict[str, Any] | str | None, delay: float
) -> None:
    res = resource("web", "tor9-99", generation=generation)
    if dev == "unknown":
        known: Device | None = None
    elif dev is None:
        known = device(Reason.CONNECTED)
    elif not dev:
        known = device(Reason.CONNECTED, other=RUNNING)
    else:
        assert isinstance(dev, dict)
        known = device(Reason.CONNECTED, web=dev)
    assert write_delay(res, known, SETTLE) == delay, why
    assert completes(res, known) is (delay == 0), why


def test_write_delay_of_a_deleted_resource_is_the_settle() -> None:
    assert write_delay(None, device(Reason.CONNECTED, web=RUNNING), SETTLE) == SETTLE
