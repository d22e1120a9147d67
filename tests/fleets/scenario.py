"""The fleet story both control planes must tell, written once against a `World`.

Five real agents (`d1`..`d5`) on a real mosquitto, a real bridge, and a DeviceProcessSet
`collector` selecting `role=collector`:

1. label d1-d3 and apply the set -> exactly three processes, all Running;
2. relabel d3 out and d4 in -> the process moves (d3's real process dies);
3. a template change with maxUnavailable 1 -> never more than one device unavailable;
4. a template that cannot start stalls the rollout at the budget; `paused` with the next template
   switches nothing; unpaused, it completes (the stalled device first);
5. an agent killed (kill -9: its will) with maxUnavailable 2 -> the disconnected device is
   switched for free and the others go on within the budget; the agent back -> all available;
6. the set deleted -> its processes are gone, and so are their real processes on the devices.

Availability is asserted from the recorded history of the owned processes (`World.history`:
every state the control plane went through, in order), not from samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from devicefabric.config.fleet import SET_LABEL, TEMPLATE_HASH_LABEL, ProcessTemplate, template_hash
from tests.support.procfs import alive
from tests.support.waiting import wait_for

DEVICES: Final = ("d1", "d2", "d3", "d4", "d5")
SET_NAME: Final = "collector"
ROLE: Final = "role"
WAIT: Final = 30.0

Snapshot = Mapping[str, tuple[str, bool]]  # device -> (template hash, available)


class World(Protocol):
    """One control plane with its bridge, broker and agents, as the story drives it."""

    @property
    def history(self) -> list[Snapshot]:
        """Every state of the set's processes, in order (appended live)."""
        ...

    def wait_devices(self) -> None: ...  # every Device created by the bridge, Connected

    def label(self, device: str, value: str | None) -> None: ...  # set or remove `role`

    def apply_set(self, template: dict[str, Any], max_unavailable: int, paused: bool) -> None: ...

    def delete_set(self) -> None: ...

    def owned(self) -> dict[str, dict[str, Any]]: ...  # device -> its owned DeviceProcess

    def set_object(self) -> dict[str, Any]: ...

    def kill_agent(self, device: str) -> None: ...

    def start_agent(self, device: str) -> None: ...

    def mark(self, phase: str) -> None: ...  # a phase ends (the kube world counts its writes)

    def apply_strategy(self, template: dict[str, Any], strategy: dict[str, Any]) -> None: ...

    def rollout(self, action: str) -> tuple[int, str]: ...  # `devicefabric rollout ACTION SET`


def template(*argv: str) -> dict[str, Any]:
    return {"command": list(argv), "terminationGracePeriodSeconds": 1}


V1 = template("sleep", "301")
V2 = template("sleep", "302")
BROKEN = template("/nonexistent/collector", "--v3")  # cannot start: never available
V3 = template("sleep", "303")
V4 = template("sleep", "304")


def digest(spec: dict[str, Any]) -> str:
    return template_hash(ProcessTemplate.model_validate(spec))


def available(obj: Mapping[str, Any]) -> bool:
    """The rollout's rule, read from a stored DeviceProcess."""
    status = obj.get("status") or {}
    connected = any(
        c.get("type") == "AgentConnected" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    return (
        connected
        and status.get("phase") in ("Running", "Succeeded")
        and status.get("observedGeneration") == obj["metadata"].get("generation")
    )


def snapshot(objects: list[Mapping[str, Any]]) -> dict[str, tuple[str, bool]]:
    """The set's processes as `history` keeps them."""
    return {
        o["spec"]["deviceName"]: (
            o["metadata"]["labels"].get(TEMPLATE_HASH_LABEL, ""),
            available(o),
        )
        for o in objects
        if (o["metadata"].get("labels") or {}).get(SET_LABEL) == SET_NAME
    }


def worst(history: list[Snapshot], since: int) -> int:
    """The most devices unavailable at once in `history[since:]`."""
    return max((sum(1 for _, ok in s.values() if not ok) for s in history[since:]), default=0)


def _state(world: World) -> dict[str, tuple[str, bool]]:
    return {
        d: (o["metadata"]["labels"].get(TEMPLATE_HASH_LABEL, ""), available(o))
        for d, o in world.owned().items()
    }


def _until(
    what: str,
    check: Callable[[], bool],
    timeout: float = WAIT,
    why: Callable[[], str] | None = None,
) -> None:
    """Wait for `check`; on a timeout, `why()` (the state) is in the error."""
    try:
        wait_for(check, timeout, 0.05, what=what)
    except AssertionError as exc:
        if why is None:
            raise
        raise AssertionError(f"{exc}\n{why()}") from None


def _all(world: World, devices: set[str], spec: dict[str, Any]) -> Callable[[], bool]:
    want = digest(spec)
    return lambda: _state(world) == dict.fromkeys(devices, (want, True))


def tell(world: World) -> None:
    """The whole story (see the module doc); raises on the first broken promise."""
    world.wait_devices()

    # 1. Three of five labelled: exactly three processes, Running.
    for device in DEVICES[:3]:
        world.label(device, "collector")
    world.apply_set(V1, max_unavailable=1, paused=False)
    _until("d1-d3 Running V1", _all(world, {"d1", "d2", "d3"}, V1))
    _until("set status 3 desired, current, updated, available", lambda: _counts(world) == (3,) * 4)
    world.mark("set applied over 3 of 5 devices")

    # 2. Relabel: d3 out, d4 in.
    d3_pid = world.owned()["d3"]["status"]["pid"]
    world.label("d3", None)
    world.label("d4", "collector")
    _until("d4 in, d3 out", _all(world, {"d1", "d2", "d4"}, V1))
    _until("d3's process gone from the device", lambda: not alive(d3_pid))
    _settle(world)
    world.mark("relabel: one device out, one in")

    # 3. A rolling update, one device at a time.
    since = len(world.history)
    world.apply_set(V2, max_unavailable=1, paused=False)
    _until("every device on V2", _all(world, {"d1", "d2", "d4"}, V2))
    assert worst(world.history, since) == 1, world.history[since:]
    _settle(world)
    world.mark("template change, maxUnavailable 1")

    # 4. A broken template stalls at the budget; paused, nothing moves; resumed, it completes.
    since = len(world.history)
    world.apply_set(BROKEN, max_unavailable=1, paused=False)
    broken = digest(BROKEN)
    _until(
        "one device on the broken template, failing",
        lambda: sorted(h for h, ok in _state(world).values() if h == broken and not ok) == [broken],
    )
    world.apply_set(V3, max_unavailable=1, paused=True)
    _until("the set reads Paused", lambda: _progressing(world) == "Paused")
    hashes = sorted(h for h, _ in _state(world).values())
    assert hashes == sorted([broken, digest(V2), digest(V2)]), hashes  # nothing switched
    world.apply_set(V3, max_unavailable=1, paused=False)
    _until("every device on V3", _all(world, {"d1", "d2", "d4"}, V3))
    assert worst(world.history, since) == 1, world.history[since:]
    _settle(world)
    world.mark("broken template stalls, pause, resume")

    # 5. A disconnected device uses budget and does not block the rest beyond it.
    world.kill_agent("d1")
    _until("d1 unavailable", lambda: not _state(world)["d1"][1])
    since = len(world.history)
    world.apply_set(V4, max_unavailable=2, paused=False)
    v4 = digest(V4)
    _until(
        "d2 and d4 on V4 and available, d1 switched while away",
        lambda: _state(world) == {"d1": (v4, False), "d2": (v4, True), "d4": (v4, True)},
    )
    assert worst(world.history, since) <= 2, world.history[since:]
    world.start_agent("d1")
    _until("d1 back on V4", _all(world, {"d1", "d2", "d4"}, V4))
    _settle(world)
    world.mark("agent killed, maxUnavailable 2, agent back")

    # 6. The set deleted: its processes go, on the control plane and on the devices.
    pids = [o["status"]["pid"] for o in world.owned().values()]
    world.delete_set()
    _until("the set's processes deleted", lambda: world.owned() == {})
    _until("their processes gone from the devices", lambda: not any(map(alive, pids)))
    world.mark("set deleted")


def _settle(world: World) -> None:
    """The set's status caught up: its generation observed, three of three everywhere, done."""
    _until(
        "the set's status settled",
        lambda: _counts(world) == (3,) * 4 and _progressing(world) == "RolloutComplete",
    )


def _counts(world: World) -> tuple[int, ...]:
    status = world.set_object().get("status") or {}
    names = ("desiredNumber", "currentNumber", "updatedNumber", "availableNumber")
    return tuple(int(status.get(n, -1)) for n in names)


def _progressing(world: World) -> str:
    obj = world.set_object()
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return ""
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Progressing":
            return str(cond.get("reason"))
    return ""


def tell_rollback(world: World) -> None:
    """A template that fails on every device: the rollout stops past maxFailures and rolls back
    within maxUnavailable; `rollout status` says failed; `rollout undo` returns the spec."""
    world.wait_devices()
    for device in DEVICES:
        world.label(device, "collector")
    world.apply_set(V1, max_unavailable=2, paused=False)
    everyone = set(DEVICES)
    _until("every device on V1", _all(world, everyone, V1))
    _until("the set complete", lambda: _counts(world)[:4] == (5,) * 4)
    _until("V1 stable", lambda: world.set_object()["status"].get("stableRevision") == digest(V1))
    assert world.rollout("status") == (
        0,
        "rollout complete: 5 of 5 devices on the current template, 5 available\n",
    )
    world.mark("set over 5 devices")

    since = len(world.history)
    world.apply_strategy(
        BROKEN,
        {
            "maxUnavailable": 2,
            "maxFailures": 1,
            "failurePolicy": "Rollback",
            "progressDeadlineSeconds": 30,
        },
    )
    _until(
        "the rollout failed",
        lambda: _progressing(world) == "RolloutFailed",
        why=lambda: f"set {world.set_object()}; processes {world.owned()}",
    )
    _until("every device back on V1", _all(world, everyone, V1))
    broken = digest(BROKEN)
    tried = {d for snap in world.history[since:] for d, (h, _) in snap.items() if h == broken}
    assert len(tried) == 2, tried  # maxUnavailable 2; past maxFailures 1 nothing more switched
    assert worst(world.history, since) <= 2, world.history[since:]
    status = world.set_object()["status"]
    assert (status["failedRevision"], status["stableRevision"]) == (broken, digest(V1))
    code, out = world.rollout("status")
    assert code == 1, out
    assert out.startswith("rollout failed")
    world.mark("broken template: stopped at maxFailures, rolled back")

    assert world.rollout("undo")[0] == 0
    _until("undone: complete on V1 again", lambda: _progressing(world) == "RolloutComplete")
    assert "failedRevision" not in world.set_object()["status"]
    assert world.rollout("status")[0] == 0
    assert _state(world) == dict.fromkeys(everyone, (digest(V1), True))  # undo moved no device
    world.mark("rollout undo")

    # pause and resume through the CLI
    assert world.rollout("pause")[0] == 0
    _until("spec.paused", lambda: world.set_object()["spec"]["paused"] is True)
    assert world.rollout("resume")[0] == 0
    _until("spec.paused false", lambda: world.set_object()["spec"]["paused"] is False)
    world.apply_set(V2, max_unavailable=2, paused=True)  # a new template, held back
    _until("the set reads Paused", lambda: _progressing(world) == "Paused")
    assert _state(world) == dict.fromkeys(everyone, (digest(V1), True))  # nothing moved
    assert world.rollout("resume")[0] == 0
    _until("resumed: every device on V2", _all(world, everyone, V2))
    world.mark("pause, resume")
