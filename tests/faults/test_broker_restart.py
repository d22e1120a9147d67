"""Fault scenario 1: the broker restarts under a fleet of agents and the bridge.

Real processes throughout: mosquitto from our generated config (persistence off, as shipped, so
the restart also loses every retained document), `devicefabric bridge run` on the local control
plane, and one `devicefabric agent run` per device, each running a `sleep`. The issue asks for 100
agents; the default run uses 12 real agents (`FAULTS_LONG=1`: 100), which is enough to measure
the reconnect spread against a synchronized herd (see `reconnect_spread`).

While the broker is down one agent is killed -9, so exactly one device really transitions; every
other device only reconnects. The story checks what an operator would: every agent came back
without restarting anything, the bridge resubscribed and follows the new sessions, every resource
ends with the right conditions, and the control plane received exactly one status write and one
Event (HeartbeatTimeout) for the dead device and nothing for the others.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import pytest

from tests.faults.budget import LONG
from tests.support.fabric import Fabric
from tests.support.processes import (
    BridgeProcess,
)
from tests.support.procfs import alive
from tests.support.resources import key, manifest, reason

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

AGENTS: Final = 100 if LONG else 12
CAP: Final = 2.0  # --max-reconnect-backoff of the agents (s)
HEARTBEAT: Final = 1
STALE: Final = 5.0  # --stale-multiplier: the dead device times out 5 heartbeats after resume
SLEEP: Final = ["sleep", "600"]
MARKER: Final = "marker"


def reconnect_spread(times: list[float], window: float = 0.1) -> tuple[float, int]:
    """(max - min, the most reconnects inside any `window`) of reconnect times (s)."""
    ordered = sorted(times)
    crowd, low = 0, 0
    for high, at in enumerate(ordered):
        while at - ordered[low] > window:
            low += 1
        crowd = max(crowd, high - low + 1)
    return ordered[-1] - ordered[0], crowd


def bridge_transitions(bridge: BridgeProcess, reason_: str) -> set[str]:
    """Devices the bridge logged a transition to `reason_` for (one INFO line each)."""
    return {
        str(line["device"])
        for line in bridge.log_lines()
        if line.get("reason") == reason_ and str(line.get("msg", "")).startswith("device ")
    }


@pytest.mark.timeout(300 if LONG else 120)
@pytest.mark.parametrize("how", ["stop", "crash"])
def test_broker_restart_reconnects_everyone_and_writes_only_real_transitions(
    tmp_path: Path, secret: bytes, how: str
) -> None:
    """`stop`: SIGTERM, as `systemctl restart mosquitto` does. mosquitto then publishes the wills
    of the clients it disconnects before the bridge, so the bridge may see some devices really
    lose their connection: each such device must get exactly its two transitions (ConnectionLost,
    Connected), or none if the queue coalesced them before writing. `crash`: SIGKILL, no wills:
    nothing may be written but the dead device's HeartbeatTimeout."""
    devices = [f"node-{i:03d}" for i in range(AGENTS)]
    dead = devices[-1]  # killed -9 while the broker is down: the one transition sure to happen
    names = {d: f"{d}-sleep" for d in devices}
    with Fabric.mosquitto(tmp_path, secret, [*devices, MARKER], plane="local") as fab:
        fab.apply(
            *(manifest(names[d], d, SLEEP, terminationGracePeriodSeconds=2) for d in devices),
        )
        marker = fab.marker(MARKER)
        bridge = fab.start_bridge(stale_multiplier=STALE)
        agents = {
            d: fab.start_agent(d, heartbeat=HEARTBEAT, extra=("--max-reconnect-backoff", str(CAP)))
            for d in devices
        }
        fab.wait_settled(*names.values(), timeout=120 if LONG else 30)
        bridge.wait_idle()
        before = {d: (agents[d].pid, fab.status(names[d])["pid"]) for d in devices}
        mark = fab.ledger.mark()

        # The outage: the broker goes, one agent dies meanwhile, the broker comes back.
        fab.broker.stop(kill=how == "crash")
        agents[dead].kill()
        live = [d for d in devices if d != dead]
        fab.wait(
            lambda: all(agents[d].logged(msg="cannot connect") for d in live),
            15,
            "every live agent retrying",
        )
        time.sleep(CAP)  # the outage itself: long enough for every back-off to reach its cap
        fab.broker.start()
        restarted = time.time()

        # Every live agent reconnects (its second "connected" line), on its own schedule.
        fab.wait(
            lambda: all(len(agents[d].logged(msg="connected to")) >= 2 for d in live),
            30 if LONG else 15,
            "every live agent reconnected",
        )
        back = {d: agents[d].logged(msg="connected to")[-1] for d in live}
        delays = [float(line["ts"]) - restarted for line in back.values()]
        spread, crowd = reconnect_spread(delays)
        print(
            f"\n[scenario 1, {how}] {len(live)} agents reconnected {min(delays):.2f}-"
            f"{max(delays):.2f}s after the broker: spread {spread:.2f}s, "
            f"at most {crowd} within 100 ms (back-off cap {CAP}s)"
        )
        assert spread >= 0.4, f"reconnects synchronized: spread {spread:.2f}s ({sorted(delays)})"
        assert crowd <= len(live) * 3 // 4, f"{crowd} of {len(live)} reconnected within 100 ms"

        # The bridge follows every live agent's new session; the dead device times out (or its
        # will came through before the bridge lost the broker).
        dead_key = names[dead]
        fab.wait(
            lambda: reason(fab.status(dead_key)) in ("HeartbeatTimeout", "ConnectionLost"),
            STALE * HEARTBEAT + 15,
            "the dead device disconnected",
        )
        fab.wait(
            lambda: all(fab.settled(names[d]) for d in live), 30, "every live device connected"
        )
        marker.flip(bridge)  # written after everything above: the counts are final
        writes = fab.ledger.writes(mark)
        events = fab.ledger.event_reasons(mark, exclude=[marker.name])
        view = bridge.devices()
        for d in live:
            assert view[d]["state"] == "connected", view[d]
            assert view[d]["session"] == back[d]["session"], (d, view[d], back[d])
            assert view[d]["lastSeenAgeSeconds"] < 3 * HEARTBEAT, view[d]

        # Writes: exactly the transitions that happened, once each, or coalesced away.
        lost = bridge_transitions(bridge, "ConnectionLost")
        print(f"[scenario 1, {how}] the bridge saw wills of {sorted(lost)}")
        print(f"[scenario 1, {how}] writes: {dict(writes)}; events: {dict(events)}")
        if how == "crash":
            assert lost == set()
        metrics = bridge.metrics()
        assert metrics.value("devicefabric_transitions_total", reason="ConnectionLost") == len(lost)
        dead_reason = reason(fab.status(dead_key))
        assert dead_reason == ("ConnectionLost" if dead in lost else "HeartbeatTimeout")
        expected_writes = {key(dead_key): 1, key(MARKER): 1}
        expected_events = {(dead_key, "Warning", str(dead_reason)): 1}
        for d in sorted(lost - {dead}):
            if writes[key(names[d])] == 0:  # coalesced: never written as lost, nothing to undo
                continue
            expected_writes[key(names[d])] = 2
            expected_events[names[d], "Warning", "ConnectionLost"] = 1
            expected_events[names[d], "Normal", "Connected"] = 1
        assert writes == expected_writes
        assert events == expected_events

        # Final state: conditions right, no process ever stopped or restarted.
        for d in live:
            assert fab.settled(names[d]), fab.status(names[d])
            agent_pid, child_pid = before[d]
            assert agents[d].alive
            assert agents[d].pid == agent_pid
            status = fab.status(names[d])
            assert (status["pid"], status["restarts"]) == (child_pid, 0)
            assert alive(child_pid)
        assert reason(fab.status(dead_key), "Synced") == "Applied"
        assert bridge.alive
