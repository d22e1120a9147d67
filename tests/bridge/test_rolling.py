"""Tier 1: a DeviceProcessSet's reconcile (`bridge.rolling.plan_set`), as tables."""

from __future__ import annotations

from typing import Any

import pytest

from devicefabric.bridge.rolling import Owned, SetView, is_available, plan_set
from devicefabric.config.fleet import DeviceProcessSetSpec, SetReason

NEW, OLD = "new", "old"


def spec(**fields: Any) -> DeviceProcessSetSpec:
    return DeviceProcessSetSpec.model_validate({"template": {"command": ["sleep", "1"]}, **fields})


def rolling(
    max_unavailable: int | str = 1, partition: int = 0, **fields: Any
) -> DeviceProcessSetSpec:
    strategy = {"rollingUpdate": {"maxUnavailable": max_unavailable, "partition": partition}}
    return spec(updateStrategy=strategy, **fields)


def owned(states: str) -> dict[str, Owned]:
    """`"a:old+ b:new- c:old+"`: device, template, available (+) or not (-)."""
    out = {}
    for item in states.split():
        device, rest = item.split(":")
        out[device] = Owned(f"ns/set-{device}", device, rest[:-1], rest[-1] == "+")
    return out


def view(s: DeviceProcessSetSpec, selected: str, states: str, conflicts: str = "") -> SetView:
    return SetView(s, NEW, selected.split(), owned(states), conflicts.split())


@pytest.mark.parametrize(
    "row",
    [
        # a new set: every selected device gets its process at once (no budget for creates)
        (rolling(), "a b c", "", ("a", "b", "c"), (), ()),
        # a device no longer selected loses its process; a newly selected one gains one
        (rolling(), "a c", "a:new+ b:new+", ("c",), (), ("ns/set-b",)),
        # a template change: one available device at a time (maxUnavailable 1)
        (rolling(), "a b c", "a:old+ b:old+ c:old+", (), ("a",), ()),
        # ...the next only once the first is available again
        (rolling(), "a b c", "a:new- b:old+ c:old+", (), (), ()),
        (rolling(), "a b c", "a:new+ b:old+ c:old+", (), ("b",), ()),
        # maxUnavailable 2 and a percentage (50% of 3 rounds up to 2)
        (rolling(2), "a b c", "a:old+ b:old+ c:old+", (), ("a", "b"), ()),
        (rolling("50%"), "a b c", "a:old+ b:old+ c:old+", (), ("a", "b"), ()),
        # an unavailable device (disconnected, crashing) is switched for free, first
        (rolling(), "a b c", "a:old+ b:old- c:old+", (), ("b",), ()),
        # a disconnected device uses up budget, it does not stall the rest beyond it
        (rolling(2), "a b c", "a:old- b:old+ c:old+", (), ("a", "b"), ()),
        (rolling(2), "a b c", "a:new- b:new+ c:old+", (), ("c",), ()),
        # partition: devices ordered before it keep the old template
        (rolling(3, partition=2), "a b c", "a:old+ b:old+ c:old+", (), ("c",), ()),
        # paused and OnDelete switch nothing, but creates and deletes follow the selector
        (rolling(paused=True), "a b", "a:old+ c:old+", ("b",), (), ("ns/set-c",)),
        (spec(updateStrategy={"type": "OnDelete"}), "a b", "a:old+", ("b",), (), ()),
    ],
)
def test_plan_set_actions(row: tuple[Any, ...]) -> None:
    """(spec, selected, owned states) -> (create, update, delete)."""
    s, selected, states, create, update, delete = row
    plan = plan_set(view(s, selected, states))
    assert (plan.create, plan.update, plan.delete) == (create, update, delete)


@pytest.mark.parametrize(
    "row",
    [
        (rolling(), "a b", "a:new+ b:new+", "", (2, 2, 2, 2), "COMPLETE", "MINIMUM_AVAILABLE"),
        (rolling(), "a b", "a:new- b:old+", "", (2, 2, 1, 1), "ROLLING_OUT", "MINIMUM_AVAILABLE"),
        (rolling(), "a b c", "a:new- b:old-", "", (3, 2, 1, 0), "ROLLING_OUT", "TOO_FEW_AVAILABLE"),
        (rolling(paused=True), "a", "a:old+", "", (1, 1, 0, 1), "PAUSED", "MINIMUM_AVAILABLE"),
        (rolling(), "a b", "a:new+", "b", (2, 1, 1, 1), "NAME_CONFLICT", "MINIMUM_AVAILABLE"),
        (rolling(), "", "", "", (0, 0, 0, 0), "COMPLETE", "MINIMUM_AVAILABLE"),
    ],
)
def test_plan_set_status(row: tuple[Any, ...]) -> None:
    """(spec, selected, owned states, conflicts) -> (counts, Progressing, Available)."""
    s, selected, states, conflicts, counts, progressing, available = row
    plan = plan_set(view(s, selected, states, conflicts))
    names = ("desiredNumber", "currentNumber", "updatedNumber", "availableNumber")
    assert tuple(plan.counts[n] for n in names) == counts
    assert (plan.progressing, plan.available) == (SetReason[progressing], SetReason[available])


def test_a_conflicting_device_gets_no_process() -> None:
    plan = plan_set(view(rolling(), "a b", "a:new+", conflicts="b"))
    assert plan.create == ()


def test_never_more_unavailable_than_the_budget_over_a_whole_rollout() -> None:
    """Drive the planner as the bridge does, each switched device coming back at random order:
    at no step are more than maxUnavailable devices unavailable, and the rollout ends."""
    devices = [f"d{i}" for i in range(7)]
    states = {d: Owned(f"ns/set-{d}", d, OLD, available=True) for d in devices}
    worst, steps = 0, 0
    while any(o.template_hash == OLD or not o.available for o in states.values()):
        steps += 1
        assert steps < 100, "the rollout does not end"
        plan = plan_set(SetView(rolling(2), NEW, devices, dict(states)))
        for d in plan.update:
            states[d] = Owned(states[d].key, d, NEW, available=False)
        worst = max(worst, sum(1 for o in states.values() if not o.available))
        down = sorted(d for d, o in states.items() if not o.available)
        if down:  # one comes back per step (the newest last)
            d = down[-1]
            states[d] = Owned(states[d].key, d, NEW, available=True)
    assert worst == 2


@pytest.mark.parametrize(
    ("phase", "observed", "generation", "connected", "expected"),
    [
        ("Running", 2, 2, True, True),
        ("Succeeded", 2, 2, True, True),
        ("Running", 1, 2, True, False),  # not yet at the new generation
        ("Running", 2, 2, False, False),  # its agent is away
        ("CrashLoopBackOff", 2, 2, True, False),
        (None, None, 1, True, False),
    ],
)
def test_is_available(
    phase: object, observed: object, generation: int, connected: bool, expected: bool
) -> None:
    assert is_available(phase, observed, generation, connected) is expected


def failing(
    max_failures: int | str | None, policy: str = "Stop", **rolling: Any
) -> DeviceProcessSetSpec:
    strategy = {
        "rollingUpdate": {
            "maxUnavailable": rolling.pop("max_unavailable", 2),
            "maxFailures": max_failures,
            "failurePolicy": policy,
        }
    }
    return spec(updateStrategy=strategy, **rolling)


def owned_failing(states: str) -> dict[str, Owned]:
    """Like `owned`, with `x` for failed (unavailable)."""
    out = {}
    for item in states.split():
        device, rest = item.split(":")
        mark = rest[-1]
        out[device] = Owned(f"ns/set-{device}", device, rest[:-1], mark == "+", failed=mark == "x")
    return out


@pytest.mark.parametrize(
    "row",
    [
        # within maxFailures: the rollout goes on (the failed device does not block past budget)
        (failing(1), "a:newx b:old+ c:old+", False, ("b",), "ROLLING_OUT", None),
        # past it: stopped, nothing more switched to the failed template
        (failing(1), "a:newx b:newx c:old+", False, (), "ROLLOUT_FAILED", NEW),
        # ...and with Rollback every device returns to the stable template, failed ones first
        (failing(1, "Rollback"), "a:newx b:newx c:old+", False, ("a", "b"), "ROLLOUT_FAILED", NEW),
        # failed once: it stays failed for that template even when no device is on it any more
        (failing(1, "Rollback"), "a:old+ b:old+ c:old+", True, (), "ROLLOUT_FAILED", NEW),
        # no limit: failures never stop it (here the two failed use up the budget of 2)
        (failing(None), "a:newx b:newx c:old+", False, (), "ROLLING_OUT", None),
        (
            failing(None, max_unavailable=3),
            "a:newx b:newx c:old+",
            False,
            ("c",),
            "ROLLING_OUT",
            None,
        ),
        # a percentage rounds down: 50% of 3 is 1
        (failing("50%"), "a:newx b:newx c:old+", False, (), "ROLLOUT_FAILED", NEW),
    ],
)
def test_failures_stop_and_roll_back(row: tuple[Any, ...]) -> None:
    """(spec, owned states, failed before) -> (update, Progressing, failed revision)."""
    s, states, failed_before, update, progressing, failed_after = row
    stable = OLD
    view = SetView(
        s,
        NEW,
        ["a", "b", "c"],
        owned_failing(states),
        stable_hash=stable,
        failed_revision=NEW if failed_before else None,
    )
    plan = plan_set(view)
    assert plan.update == update
    assert plan.progressing is SetReason[progressing]
    assert plan.failed_revision == failed_after
    assert plan.target == (OLD if failed_after else NEW)


def test_a_completed_template_stays_complete_when_devices_go_away() -> None:
    """Progressing says where the rollout is, not how the devices are (Available does)."""
    away = plan_set(SetView(rolling(), NEW, ["a", "b"], owned("a:new+ b:new-"), stable_hash=NEW))
    assert (away.progressing, away.available) == (SetReason.COMPLETE, SetReason.MINIMUM_AVAILABLE)
    rolling_out = plan_set(
        SetView(rolling(), NEW, ["a", "b"], owned("a:new+ b:new-"), stable_hash=OLD)
    )
    assert rolling_out.progressing is SetReason.ROLLING_OUT


def test_a_completed_rollout_makes_its_template_stable() -> None:
    done = plan_set(SetView(rolling(), NEW, ["a"], owned("a:new+"), stable_hash=OLD))
    assert done.stable_hash == NEW
    going = plan_set(SetView(rolling(), NEW, ["a", "b"], owned("a:new+ b:old+"), stable_hash=OLD))
    assert going.stable_hash == OLD


def test_a_failed_rollout_creates_new_devices_from_the_stable_template() -> None:
    plan = plan_set(SetView(failing(0), NEW, ["a", "b"], owned_failing("a:newx"), stable_hash=OLD))
    assert (plan.create, plan.target) == (("b",), OLD)
