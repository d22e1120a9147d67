"""Fault scenario 9 (`FAULTS_LONG=1` only): a long quiet day with a thousand devices.

1,000 simulated devices (`tests.support.devices`: real MQTT connections with the agent's will, one
asyncio loop in a thread of the test process) against a real mosquitto and `devicefabric bridge
run` on the local control plane, one DeviceProcess each. After everything is written once, the
fleet only heartbeats (every 2 s: 500 messages/s) for 10 minutes, and the bridge is sampled every
10 s: RSS, open file descriptors, threads, asyncio tasks (through `launch.py`), heartbeats received.

What must hold: zero control-plane writes in the steady state (shown with the positive marker),
RSS flat (its least-squares slope after a warm-up is printed and bounded), and the same number of
descriptors and tasks after as before. `FAULTS_SOAK_DEVICES` and `FAULTS_SOAK_SECONDS` shrink the
soak for a quick look; the issue's figures come from the defaults.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.faults.budget import LONG
from tests.support.devices import Fleet
from tests.support.fabric import Fabric
from tests.support.inproc import LoopThread
from tests.support.processes import (
    BridgeProcess,
)
from tests.support.procfs import open_fds, rss_kib, threads
from tests.support.resources import manifest, reason

pytestmark = [
    pytest.mark.faults,
    pytest.mark.mosquitto,
    pytest.mark.skipif(not LONG, reason="the soak runs with FAULTS_LONG=1"),
    pytest.mark.timeout(3600),
]

DEVICES: Final = int(os.environ.get("FAULTS_SOAK_DEVICES") or 1000)
SECONDS: Final = float(os.environ.get("FAULTS_SOAK_SECONDS") or 600)
HEARTBEAT: Final = 2
SAMPLE_EVERY: Final = 10.0
WARM_UP: Final = 0.2  # the first fifth of the samples is left out of the slope
SLOPE_BOUND_KIB_PER_MIN: Final = 100.0


@contextlib.asynccontextmanager
async def beating_fleet(fab: Fabric, names: list[str]) -> AsyncIterator[Fleet]:
    """`names` connected (in batches of 100: no thundering herd) and beating, for the block."""
    fleet = Fleet(fab.broker.host, fab.broker.port, fab.broker.secret, heartbeat_s=HEARTBEAT)
    try:
        for first in range(0, len(names), 100):
            await fleet.connect(names[first : first + 100])
        async with fleet.beating():
            yield fleet
    finally:
        await fleet.close()


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # s since the steady state began
    rss_kib: int
    fds: int
    threads: int
    tasks: int
    heartbeats: float


def sample(bridge: BridgeProcess, since: float) -> Sample:
    heartbeats = bridge.metrics().value("devicefabric_messages_total", kind="heartbeat")
    return Sample(
        at=time.monotonic() - since,
        rss_kib=rss_kib(bridge.pid),
        fds=open_fds(bridge.pid),
        threads=threads(bridge.pid),
        tasks=bridge.tasks(),
        heartbeats=heartbeats,
    )


def slope_kib_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time."""
    xs = [s.at / 60 for s in samples]
    ys = [float(s.rss_kib) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def test_a_thousand_quiet_devices_for_ten_minutes_write_nothing_and_leak_nothing(
    tmp_path: Path, secret: bytes
) -> None:
    names = [f"soak-{i:04d}" for i in range(DEVICES)]
    with Fabric.mosquitto(tmp_path, secret, [*names, "marker"], plane="local") as fab:
        fab.apply(*(manifest(f"{n}-job", n, ["sleep", "600"]) for n in names))
        marker = fab.marker()
        bridge = fab.start_bridge(write_qps=200.0, write_burst=200, count_tasks=True)
        with LoopThread(lambda: beating_fleet(fab, names), name="fleet", timeout=120):
            fab.wait(
                lambda: (
                    bridge.metrics().value("devicefabric_devices", state="connected") == DEVICES
                ),
                120,
                "every device connected",
            )
            fab.wait(
                lambda: all(reason(fab.status(f"{n}-job")) == "Connected" for n in names),
                300,
                "every resource written once",
            )
            bridge.wait_idle(60)
            mark = fab.ledger.mark()
            started = time.monotonic()
            samples = [sample(bridge, started)]
            while samples[-1].at < SECONDS:
                time.sleep(SAMPLE_EVERY)  # the sampling period of the soak, not a wait on state
                samples.append(sample(bridge, started))
                assert bridge.alive
            marker.flip(bridge, timeout=60)  # after the steady state: the counts are final
            writes = fab.ledger.writes(mark)
            events = fab.ledger.event_reasons(mark, exclude=[marker.name])

        first, last = samples[0], samples[-1]
        # An HTTP request of ours may be in flight in the bridge when it counts its descriptors or
        # tasks: compare the quietest of the first three samples with the quietest of the last.
        before = {f: min(getattr(s, f) for s in samples[:3]) for f in ("fds", "threads", "tasks")}
        after = {f: min(getattr(s, f) for s in samples[-3:]) for f in ("fds", "threads", "tasks")}
        steady = samples[int(len(samples) * WARM_UP) :]
        slope = slope_kib_per_min(steady)
        expected_beats = DEVICES * (last.at - first.at) / HEARTBEAT
        received = last.heartbeats - first.heartbeats
        print(
            f"\n[scenario 9] {DEVICES} devices, {last.at / 60:.1f} min, "
            f"{received:.0f} heartbeats ({received / (last.at - first.at):.0f}/s): "
            f"RSS {first.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB "
            f"(max {max(s.rss_kib for s in samples) / 1024:.1f}), slope {slope:.1f} KiB/min "
            f"after warm-up; before -> after: {before} -> {after}; writes {dict(writes)}"
        )
        assert writes == {f"default/{marker.name}": 1}
        assert events == {}
        assert received >= 0.9 * expected_beats
        assert abs(slope) < SLOPE_BOUND_KIB_PER_MIN
        assert after == before
