"""Reconcile: only what changed; a change to one entry never touches another."""

from __future__ import annotations

from typing import Any

import pytest

from devicefabric.agent.reconciling import (
    ActionKind,
    RejectedDesiredError,
    Want,
    reconcile,
    wants_of,
)
from devicefabric.config import lean
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import DesiredProcess, make_desired
from tests.support.desired import lean_of, lean_spec

DEVICE = "tor9-99"


def want(name: str, generation: int = 1, uid: str | None = None, **spec: Any) -> Want:
    fields: dict[str, Any] = {"device_name": DEVICE, "command": ["/bin/sleep", "60"], **spec}
    return Want(
        f"default/{name}", uid or f"uid-{name}", generation, lean_spec(DeviceProcessSpec(**fields))
    )


def by_key(*wants: Want) -> dict[str, Want]:
    return {w.key: w for w in wants}


@pytest.mark.parametrize(
    ("desired", "running", "start", "restart", "stop", "unchanged"),
    [
        pytest.param((), (), [], [], [], [], id="nothing"),
        pytest.param((want("a"),), (), ["a"], [], [], [], id="new entry starts"),
        pytest.param((), (want("a"),), [], [], ["a"], [], id="removed entry stops"),
        pytest.param(
            (want("a"), want("b")),
            (want("a"), want("b")),
            [],
            [],
            [],
            ["a", "b"],
            id="same document changes nothing",
        ),
        pytest.param(
            (want("a", command=["/bin/sleep", "61"]), want("b")),
            (want("a"), want("b")),
            [],
            ["a"],
            [],
            ["b"],
            id="spec change restarts only that entry",
        ),
        pytest.param(
            (want("a", generation=2), want("b")),
            (want("a"), want("b")),
            [],
            ["a"],
            [],
            ["b"],
            id="generation change restarts only that entry",
        ),
        pytest.param(
            (want("a", uid="new"),),
            (want("a"),),
            [],
            ["a"],
            [],
            [],
            id="recreated resource (new uid) restarts",
        ),
        pytest.param(
            (want("a", suspend=True), want("b")),
            (want("a"), want("b")),
            [],
            ["a"],
            [],
            ["b"],
            id="suspend is a change of that entry",
        ),
        pytest.param(
            (want("a"),),
            (want("a", suspend=True),),
            [],
            ["a"],
            [],
            [],
            id="resume is a change of that entry",
        ),
        pytest.param((want("c"),), (want("a"), want("b")), ["c"], [], ["a", "b"], [], id="swap"),
        pytest.param(
            (),
            (want("a"), want("b"), want("c")),
            [],
            [],
            ["a", "b", "c"],
            [],
            id="empty list stops everything",
        ),
        pytest.param(
            (want("a", env=[{"name": "X", "value": "1"}]),),
            (want("a"),),
            [],
            ["a"],
            [],
            [],
            id="env change restarts",
        ),
    ],
)
def test_reconcile(
    *,
    desired: tuple[Want, ...],
    running: tuple[Want, ...],
    start: list[str],
    restart: list[str],
    stop: list[str],
    unchanged: list[str],
) -> None:
    plan = reconcile(by_key(*desired), by_key(*running))

    def names(keys: list[str] | tuple[str, ...]) -> list[str]:
        return [k.removeprefix("default/") for k in keys]

    assert names(plan.keys(ActionKind.START)) == start
    assert names(plan.keys(ActionKind.RESTART)) == restart
    assert names(plan.keys(ActionKind.STOP)) == stop
    assert names(plan.unchanged) == unchanged
    assert plan.empty == (not (start or restart or stop))


def test_stops_come_before_starts_and_restarts_carry_the_new_want() -> None:
    new = want("b", generation=5)
    plan = reconcile(by_key(new, want("c")), by_key(want("a"), want("b")))
    assert [a.kind for a in plan.actions] == [ActionKind.STOP, ActionKind.RESTART, ActionKind.START]
    assert plan.actions[1].want == new
    assert plan.actions[0].want is None


def _proc(name: str, device: str = DEVICE, namespace: str = "default") -> DesiredProcess:
    return DesiredProcess(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        generation=1,
        spec=DeviceProcessSpec(device_name=device, command=["/bin/true"]),
    )


def test_wants_of_a_document_for_this_device() -> None:
    doc = lean_of(make_desired([_proc("a"), _proc("a", namespace="other")]))
    assert sorted(wants_of(doc, DEVICE)) == ["default/a", "other/a"]


def test_a_document_naming_another_device_is_rejected_whole() -> None:
    doc = lean_of(make_desired([_proc("a"), _proc("b", device="someone-else")]))
    with pytest.raises(RejectedDesiredError) as info:
        wants_of(doc, DEVICE)
    assert info.value.reason == "other_device"
    assert "someone-else" in str(info.value)


def test_a_document_with_a_key_twice_is_rejected() -> None:
    # The wire model refuses this already; the agent's own check is defence in depth.
    one = lean_of(make_desired([_proc("a")])).processes[0]
    doc = lean.Desired(revision="r", processes=(one, one))
    with pytest.raises(RejectedDesiredError) as info:
        wants_of(doc, DEVICE)
    assert info.value.reason == "duplicate_key"
