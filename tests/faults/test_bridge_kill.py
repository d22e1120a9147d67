"""Fault scenario 2: the bridge is killed -9 and restarted while devices change.

Real processes: mosquitto, `devicefabric bridge run` on the local control plane, one `devicefabric
agent run` per device. While no bridge runs, four kinds of device change (the broker keeps the
retained truth about each) and the rest stay as they were:

| device   | while the bridge is down                  | writes after the restart (per resource)   |
|----------|-------------------------------------------|-------------------------------------------|
| steady-* | nothing                                   | none                                      |
| lost     | agent killed -9 (the broker fires its will) | 1 patch + Warning ConnectionLost        |
| quit     | agent stopped cleanly (SIGTERM): its last | 1 patch (phase Stopped) + Warning         |
|          | report says Stopped                       | Shutdown                                  |
| crash    | its process killed (restartPolicy Never)  | 1 patch (phase Failed, exitCode 137)      |
| fresh    | its agent connects for the first time     | the process fields and Synced, then       |
|          |                                           | AgentConnected: at most 2 patches, and    |
|          |                                           | one Normal Connected Event                |

`fresh` is the one device whose count is a range: the restarted bridge learns its report from the
retained replay (written at once: phase, pid, Synced) and its connection only from its first live
heartbeat (an `online` replayed from the broker is a fact about the past), and the two may or may
not coalesce. A restarted bridge also republishes no `desired` (the retained documents match).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Final

import pytest

from tests.faults.budget import LONG
from tests.support.fabric import Fabric
from tests.support.inbox import Message
from tests.support.mqtt import connect
from tests.support.processes import (
    running_pids,
)
from tests.support.resources import key, manifest, reason

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

STEADY: Final = tuple(f"steady-{i}" for i in range(20 if LONG else 4))
CHANGING: Final = ("lost", "quit", "crash", "fresh")
SLEEP: Final = ["sleep", "600"]


def name_of(device: str) -> str:
    return f"{device}-sleep"


def status_is(reason_: str, message: Message) -> bool:
    doc = json.loads(message.payload)
    return bool(doc.get("state") == "offline" and doc.get("reason") == reason_)


@pytest.mark.timeout(300 if LONG else 120)
def test_bridge_kill_9_and_restart_writes_exactly_what_changed_meanwhile(
    tmp_path: Path, secret: bytes
) -> None:
    devices = (*STEADY, *CHANGING)
    with Fabric.mosquitto(tmp_path, secret, [*devices, "marker"], plane="local") as fab:
        fab.apply(
            *(
                manifest(
                    name_of(d),
                    d,
                    SLEEP,
                    restartPolicy="Never" if d == "crash" else "Always",
                    terminationGracePeriodSeconds=2,
                )
                for d in devices
            )
        )
        marker = fab.marker()
        bridge = fab.start_bridge()
        agents = {d: fab.agent(d) for d in devices}
        for d in devices:
            if d != "fresh":
                agents[d].start()
        fab.wait_settled(*(name_of(d) for d in devices if d != "fresh"), timeout=60)
        fab.wait(
            lambda: reason(fab.status(name_of("fresh")), "Synced") == "Pending",
            10,
            "the fresh device's resource pending",
        )
        bridge.wait_idle()
        steady_before = {d: fab.status(name_of(d)) for d in STEADY}
        crash_pid = fab.status(name_of("crash"))["pid"]

        bridge.kill()
        mark = fab.ledger.mark()  # no bridge runs: whatever is counted from here is the next one's
        with connect(fab.broker, "observer") as observer:
            observer.subscribe(fab.broker.topics.everything())
            topics = fab.broker.topics
            agents["lost"].kill()
            observer.inbox.wait_for(topics.status("lost"), lambda m: status_is("lost", m))
            assert agents["quit"].terminate() == 0
            observer.inbox.wait_for(topics.status("quit"), lambda m: status_is("shutdown", m))
            os.kill(crash_pid, signal.SIGKILL)
            observer.inbox.wait_for(
                topics.report("crash"),
                lambda m: (
                    json.loads(m.payload)["processes"][key(name_of("crash"))]["phase"] == "Failed"
                ),
            )
            agents["fresh"].start()
            report = observer.inbox.wait_for(
                topics.report("fresh"), lambda m: bool(running_pids(m.json())), timeout=15
            )
            fab.track(*running_pids(report.json()).values())

        bridge.start()
        fab.wait_settled(*(name_of(d) for d in (*STEADY, "fresh")), timeout=30)
        fab.wait_settled(name_of("lost"), connected="ConnectionLost")
        fab.wait_settled(name_of("quit"), phase="Stopped", connected="Shutdown")
        fab.wait_settled(name_of("crash"), phase="Failed")
        marker.flip(bridge)  # written after everything the restart could write: counts are final

        writes = fab.ledger.writes(mark)
        events = fab.ledger.event_reasons(mark, exclude=[marker.name])
        print(f"\n[scenario 2] writes after the restart: {dict(writes)}; events: {dict(events)}")
        fresh_writes = writes.pop(key(name_of("fresh")), 0)
        assert 1 <= fresh_writes <= 2
        assert writes == {
            key(name_of("lost")): 1,
            key(name_of("quit")): 1,
            key(name_of("crash")): 1,
            key(marker.name): 1,
        }
        assert events == {
            (name_of("lost"), "Warning", "ConnectionLost"): 1,
            (name_of("quit"), "Warning", "Shutdown"): 1,
            (name_of("fresh"), "Normal", "Connected"): 1,
        }
        for d in STEADY:  # not even a lastTransitionTime moved
            assert fab.status(name_of(d)) == steady_before[d]
        quit_ = fab.status(name_of("quit"))
        assert quit_["exitCode"] == 143  # SIGTERM, as a shell shows it (128 + 15)
        crashed = fab.status(name_of("crash"))
        assert (crashed["exitCode"], crashed.get("pid")) == (137, None)
        assert "SIGKILL" in crashed["message"]
        assert bridge.metrics().value("devicefabric_desired_published_total") == 0
