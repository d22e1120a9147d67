"""Tier 1: the device tracker's transitions, table-driven (messages + the bridge's clock)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import pytest

from devicefabric.bridge.tracking import DeviceTracker, ReportChanged, Transition
from devicefabric.config.resource import Reason
from devicefabric.config.wire import Heartbeat, ProcessReport, Report, StatusOffline, StatusOnline

DEV = "tor9-99"
HB = 10  # heartbeat_s in births; stale window = 3 x 10 s


def online(session: str, heartbeat_s: int = HB) -> StatusOnline:
    return StatusOnline(state="online", session=session, heartbeat_s=heartbeat_s, agent="t")


def lost(session: str) -> StatusOffline:
    return StatusOffline(state="offline", session=session, reason="lost")


def shutdown(session: str) -> StatusOffline:
    return StatusOffline(state="offline", session=session, reason="shutdown")


def beat(session: str, seq: int = 1) -> Heartbeat:
    return Heartbeat(session=session, seq=seq)


def report(session: str, **phases: str) -> Report:
    return Report(
        session=session,
        seq=1,
        revision="r1",
        processes={f"default/{k}": ProcessReport(generation=1, phase=v) for k, v in phases.items()},  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Step:
    at: float
    message: StatusOnline | StatusOffline | Heartbeat | Report | None  # None: sweep
    retained: bool = False


def feed(tracker: DeviceTracker, step: Step) -> list[str]:
    msg = step.message
    if msg is None:
        changes: list[Transition | ReportChanged] = list(tracker.sweep(step.at))
    elif isinstance(msg, StatusOnline | StatusOffline):
        changes = list(tracker.status(DEV, msg, step.at, retained=step.retained))
    elif isinstance(msg, Heartbeat):
        changes = list(tracker.heartbeat(DEV, msg, step.at))
    else:
        changes = list(tracker.report(DEV, msg, step.at, retained=step.retained))
    return [c.reason.value for c in changes if isinstance(c, Transition)]


CASES: dict[str, tuple[list[Step], list[str], Reason | None, str | None]] = {
    # name: (steps, transitions in order, final reason, final session)
    "birth connects": ([Step(0, online("s1"))], ["Connected"], Reason.CONNECTED, "s1"),
    "will of the current session": (
        [Step(0, online("s1")), Step(1, lost("s1"))],
        ["Connected", "ConnectionLost"],
        Reason.CONNECTION_LOST,
        "s1",
    ),
    "clean shutdown": (
        [Step(0, online("s1")), Step(1, shutdown("s1"))],
        ["Connected", "Shutdown"],
        Reason.SHUTDOWN,
        "s1",
    ),
    "late will of an old session after a reconnect is ignored": (
        [Step(0, online("s1")), Step(1, online("s2")), Step(2, lost("s1"))],
        ["Connected"],
        Reason.CONNECTED,
        "s2",
    ),
    "reconnect after a will": (
        [Step(0, online("s1")), Step(1, lost("s1")), Step(2, online("s2"))],
        ["Connected", "ConnectionLost", "Connected"],
        Reason.CONNECTED,
        "s2",
    ),
    "heartbeats keep it connected, no transitions": (
        [Step(0, online("s1")), *(Step(t, beat("s1", t)) for t in range(10, 200, 10))],
        ["Connected"],
        Reason.CONNECTED,
        "s1",
    ),
    "silence times out once, however long it lasts": (
        [Step(0, online("s1")), Step(29, None), Step(31, None), Step(500, None), Step(9000, None)],
        ["Connected", "HeartbeatTimeout"],
        Reason.HEARTBEAT_TIMEOUT,
        "s1",
    ),
    "a heartbeat brings a stale device back once": (
        [Step(0, online("s1")), Step(31, None), Step(40, beat("s1")), Step(41, beat("s1", 2))],
        ["Connected", "HeartbeatTimeout", "Connected"],
        Reason.CONNECTED,
        "s1",
    ),
    "a heartbeat from an unknown device connects it": (
        [Step(0, beat("s9"))],
        ["Connected"],
        Reason.CONNECTED,
        "s9",
    ),
    "heartbeats of a dead session change nothing": (
        [Step(0, online("s1")), Step(1, lost("s1")), Step(2, beat("s1"))],
        ["Connected", "ConnectionLost"],
        Reason.CONNECTION_LOST,
        "s1",
    ),
    "a heartbeat under a new session revives a lost device": (
        [Step(0, online("s1")), Step(1, lost("s1")), Step(2, beat("s2"))],
        ["Connected", "ConnectionLost", "Connected"],
        Reason.CONNECTED,
        "s2",
    ),
    "a straggler heartbeat of another session is ignored while connected": (
        [Step(0, online("s2")), Step(1, beat("s1"))],
        ["Connected"],
        Reason.CONNECTED,
        "s2",
    ),
    "a live report is a heartbeat": (
        [Step(0, online("s1")), Step(25, report("s1", a="Running")), Step(50, None)],
        ["Connected"],
        Reason.CONNECTED,
        "s1",
    ),
    "a will after a timeout changes nothing (one write per outage)": (
        [Step(0, online("s1")), Step(31, None), Step(40, lost("s1"))],
        ["Connected", "HeartbeatTimeout"],
        Reason.HEARTBEAT_TIMEOUT,
        "s1",
    ),
    "a clean exit after a timeout is news": (
        [Step(0, online("s1")), Step(31, None), Step(40, shutdown("s1"))],
        ["Connected", "HeartbeatTimeout", "Shutdown"],
        Reason.SHUTDOWN,
        "s1",
    ),
    "a re-birth of the current session changes nothing": (
        [Step(0, online("s1")), Step(5, online("s1"))],
        ["Connected"],
        Reason.CONNECTED,
        "s1",
    ),
    # Retained replays (bridge start, broker reconnect): facts, not liveness.
    "a replayed birth leaves the device unconfirmed": (
        [Step(0, online("s1"), retained=True)],
        [],
        None,
        "s1",
    ),
    "the first heartbeat confirms a replayed birth": (
        [Step(0, online("s1"), retained=True), Step(5, beat("s1"))],
        ["Connected"],
        Reason.CONNECTED,
        "s1",
    ),
    "a replayed birth without heartbeats times out": (
        [Step(0, online("s1"), retained=True), Step(31, None)],
        ["HeartbeatTimeout"],
        Reason.HEARTBEAT_TIMEOUT,
        "s1",
    ),
    "a replayed will is a transition": (
        [Step(0, lost("s1"), retained=True)],
        ["ConnectionLost"],
        Reason.CONNECTION_LOST,
        "s1",
    ),
    "a replay of what we know changes nothing": (
        [Step(0, online("s1")), Step(5, online("s1"), retained=True)],
        ["Connected"],
        Reason.CONNECTED,
        "s1",
    ),
    "a replay of a new session while connected keeps it connected": (
        [Step(0, online("s1")), Step(5, online("s2"), retained=True), Step(6, lost("s1"))],
        ["Connected"],
        Reason.CONNECTED,
        "s2",
    ),
    "a replay of a new session after a will waits for a heartbeat": (
        [Step(0, online("s1")), Step(1, lost("s1")), Step(5, online("s2"), retained=True)],
        ["Connected", "ConnectionLost"],
        None,
        "s2",
    ),
    "a retained report is no sign of life": (
        [Step(0, online("s1")), Step(25, report("s1", a="Running"), retained=True), Step(31, None)],
        ["Connected", "HeartbeatTimeout"],
        Reason.HEARTBEAT_TIMEOUT,
        "s1",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_transitions(name: str) -> None:
    steps, expected, reason, session = CASES[name]
    tracker = DeviceTracker(stale_multiplier=3)
    seen: list[str] = []
    for step in steps:
        seen += feed(tracker, step)
    device = tracker.get(DEV)
    assert device is not None
    assert (seen, device.reason, device.session) == (expected, reason, session)


def test_heartbeat_s_comes_from_the_birth() -> None:
    tracker = DeviceTracker(stale_multiplier=2)
    tracker.status(DEV, online("s1", heartbeat_s=1), 0.0)
    assert tracker.sweep(1.9) == []
    assert [t.reason for t in tracker.sweep(2.0)] == [Reason.HEARTBEAT_TIMEOUT]


def test_transition_carries_previous_and_session() -> None:
    tracker = DeviceTracker()
    tracker.status(DEV, online("s1"), 0.0)
    (change,) = tracker.status(DEV, lost("s1"), 1.0)
    assert change == Transition(DEV, Reason.CONNECTION_LOST, Reason.CONNECTED, "s1")


def test_report_changes_name_only_changed_entries() -> None:
    tracker = DeviceTracker()
    first = tracker.report(DEV, report("s1", a="Running", b="Running"), 0.0, retained=True)
    assert first == (ReportChanged(DEV, None),)
    same = tracker.report(DEV, report("s1", a="Running", b="Running"), 1.0, retained=True)
    assert same == ()
    changed = tracker.report(DEV, report("s1", a="Running", c="Pending"), 2.0, retained=True)
    assert changed == (ReportChanged(DEV, frozenset({"default/b", "default/c"})),)


def test_heartbeat_fast_path_returns_the_shared_empty_tuple() -> None:
    tracker = DeviceTracker()
    tracker.status(DEV, online("s1"), 0.0)
    assert tracker.heartbeat(DEV, beat("s1"), 1.0) is tracker.heartbeat(DEV, beat("s1"), 2.0)


def test_resume_after_the_bridges_own_outage_restarts_deadlines() -> None:
    tracker = DeviceTracker(stale_multiplier=3)
    tracker.status(DEV, online("s1"), 0.0)
    tracker.resume(100.0)  # the bridge was blind from ~0 to 100
    assert tracker.sweep(101.0) == []
    assert [t.reason for t in tracker.sweep(130.0)] == [Reason.HEARTBEAT_TIMEOUT]


def test_sweep_touches_each_healthy_device_once_per_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,000 devices beating every 10 s for 120 s, swept every 0.1 s: a scan would check each
    device on every tick (2.4 M checks); the heap pops each about once per 30 s window."""
    pops = 0
    real_pop = heapq.heappop

    def counting_pop(heap: list[tuple[float, str]]) -> tuple[float, str]:
        nonlocal pops
        pops += 1
        return real_pop(heap)

    monkeypatch.setattr(heapq, "heappop", counting_pop)  # tracking calls heapq.heappop
    n, period, duration, tick = 2_000, 10, 120.0, 0.1
    tracker = DeviceTracker(stale_multiplier=3)
    for i in range(n):
        tracker.status(f"d{i}", online("s", heartbeat_s=period), 0.0)
    ticks = int(duration / tick)
    for k in range(1, ticks + 1):
        now = k * tick
        # device i beats at i*period/n + m*period: spread evenly over each period
        for i in range(int((now - tick) * n / period), int(now * n / period)):
            tracker.heartbeat(f"d{i % n}", beat("s"), now)
        assert tracker.sweep(now) == []
    windows = duration / (period * 3)
    assert pops <= n * (windows + 1), f"{pops} pops for {n} devices over {windows} windows"
    assert tracker.counts() == {"connected": n, "disconnected": 0, "unknown": 0}


def test_counts_and_states() -> None:
    tracker = DeviceTracker()
    tracker.status("a", online("s"), 0.0)
    tracker.status("b", lost("s"), 0.0, retained=True)
    tracker.status("c", online("s"), 0.0, retained=True)
    assert tracker.counts() == {"connected": 1, "disconnected": 1, "unknown": 1}


def test_a_rebirth_with_a_shorter_heartbeat_times_out_on_the_new_window() -> None:
    tracker = DeviceTracker(stale_multiplier=3)
    assert feed(tracker, Step(0, online("s1", heartbeat_s=15))) == ["Connected"]
    assert feed(tracker, Step(1, lost("s1"))) == ["ConnectionLost"]
    assert feed(tracker, Step(2, online("s2", heartbeat_s=2))) == ["Connected"]
    assert feed(tracker, Step(7.9, None)) == []
    # The new window is 3 x 2 s from the birth at t=2, not the old 45 s one.
    assert feed(tracker, Step(8.1, None)) == ["HeartbeatTimeout"]
    assert feed(tracker, Step(46, None)) == []  # the stale 45 s entry decides nothing twice


FACTS = {"os": "Linux", "arch": "x86_64", "cpus": 4, "memory_bytes": 2**33}


def test_facts_come_from_the_latest_birth_keyed_by_device_status_field() -> None:
    tracker = DeviceTracker()
    tracker.status(DEV, online("s1"), 0.0)
    device = tracker.get(DEV)
    assert device is not None
    assert dict(device.facts) == {}
    tracker.status(DEV, online("s2").model_copy(update=FACTS), 1.0)
    assert dict(device.facts) == {"os": "Linux", "arch": "x86_64", "cpus": 4, "memoryBytes": 2**33}
    with pytest.raises(TypeError):
        device.facts["os"] = "Plan9"  # type: ignore[index]
    tracker.status(DEV, online("s3"), 2.0)  # an older agent: no facts clears them
    assert dict(device.facts) == {}


def test_a_birth_changing_only_facts_is_no_transition() -> None:
    tracker = DeviceTracker()
    born = Transition(DEV, Reason.CONNECTED, None, "s1")
    assert tracker.status(DEV, online("s1"), 0.0) == (born,)
    assert tracker.status(DEV, online("s1").model_copy(update=FACTS), 1.0) == ()
    assert tracker.status(DEV, online("s1").model_copy(update={"cpus": 8}), 2.0) == ()
    device = tracker.get(DEV)
    assert device is not None
    assert dict(device.facts) == {"cpus": 8}
    assert (device.reason, device.session) == (Reason.CONNECTED, "s1")
    assert tracker.status(DEV, online("s1").model_copy(update=FACTS), 3.0, retained=True) == ()
    assert device.facts["arch"] == "x86_64"


def test_a_birth_of_a_dead_session_keeps_the_facts() -> None:
    tracker = DeviceTracker()
    tracker.status(DEV, online("s1").model_copy(update={"arch": "armv7l"}), 0.0)
    tracker.status(DEV, online("s2").model_copy(update={"arch": "aarch64"}), 1.0)
    assert tracker.status(DEV, online("s1").model_copy(update={"arch": "armv7l"}), 2.0) == ()
    device = tracker.get(DEV)
    assert device is not None
    assert dict(device.facts) == {"arch": "aarch64"}
