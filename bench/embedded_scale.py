"""Benchmark 9, the embedded broker at fleet scale: CPU in steady state vs the number of devices.

For each N (`--sizes`, default 1,000 / 3,000 / 5,000; quick 500 / 1,500): a fresh embedded broker
(`devicefabric broker run`), a subscriber holding the bridge's four wildcard filters (user
`bridge`, `devices/+/{status,report,desired}` QoS 1 and `devices/+/heartbeat` QoS 0, as the bridge
subscribes), and `bench.simfleet` with N devices (each its own connection, retained birth and
report, a subscription to its own `desired`, a QoS 0 heartbeat every 15 s). Once every
device is connected, the broker's CPU is read over `--steady` seconds and divided by the wall
time: the share of one core the broker needs to carry N devices, with the message rate it saw.

The goal: CPU linear in the message rate
and under 20% of a core at 5,000 devices. Before the topic index the broker checked every filter
(2N + 4 of them) against every message: 10.5% / 37% / 100% of a core at 1k / 3k / 5k.

Usage: `python -m bench.embedded_scale [--quick] [--sizes 1000,5000] [--steady S]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Final

from bench.fabric import Fabric, cpu_seconds, rss_kib
from bench.harness import Defaults, Result, count, main
from bench.simfleet import FleetProc
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.topics import DeviceTopic, Topics
from tests.support.mqtt import connect

T: Final = Topics()
GOAL_SHARE: Final = 0.20  # of one core, at 5,000 devices


def _one(n: int, args: argparse.Namespace) -> dict[str, float]:
    with Fabric("bench-embedded-scale-") as fab:
        broker = fab.embedded()
        with connect(broker, BRIDGE_USER) as bridge:
            for kind, qos in (
                (DeviceTopic.STATUS, 1),
                (DeviceTopic.REPORT, 1),
                (DeviceTopic.DESIRED, 1),
                (DeviceTopic.HEARTBEAT, 0),
            ):
                assert not bridge.subscribe(T.all_devices(kind), qos=qos).is_failure
            fleet = FleetProc(fab, broker, n)
            fleet.command("connect", "connected")
            # the measurement starts once every birth and report reached the bridge's filters
            bridge.inbox.wait_count(n, T.all_devices(DeviceTopic.REPORT), 120.0)
            seen0, cpu0, t0 = len(bridge.inbox.messages()), cpu_seconds(broker), time.time()
            time.sleep(args.steady)  # a measurement window, not a wait for a condition
            seen1, cpu1, t1 = len(bridge.inbox.messages()), cpu_seconds(broker), time.time()
            rss = rss_kib(broker)
    wall = t1 - t0
    return {
        "devices": n,
        "core_share": (cpu1 - cpu0) / wall,
        "msgs_per_s": (seen1 - seen0) / wall,
        "rss_mib": rss / 1024,
    }


DEFAULTS: Final[Defaults] = {"sizes": ("1000,3000,5000", "500,1500"), "steady": (30.0, 10.0)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", help="comma-separated fleet sizes")
    p.add_argument("--steady", type=float, help="seconds of steady state measured")


def run(args: argparse.Namespace, result: Result) -> Result:
    runs = result.over_sizes(args.sizes, lambda n: _one(n, args))
    for measured in runs:
        n = measured["devices"]
        result.row(
            f"embedded broker CPU, {n:,} devices (15 s heartbeats)",
            f"{measured['core_share']:.1%} of a core",
            goal=f"< {GOAL_SHARE:.0%} at 5,000" if n == 5000 else "",
            met=measured["core_share"] < GOAL_SHARE if n == 5000 else None,
            note=f"{count(measured['msgs_per_s'])} msg/s to the bridge's filters; "
            f"RSS {measured['rss_mib']:.0f} MiB",
        )
    if len(runs) > 1:
        per_msg = [r["core_share"] / max(r["msgs_per_s"], 1e-9) * 1e6 for r in runs]
        result.series("cpu_us_per_msg", per_msg)
        result.note(
            "CPU per message (us) by size: "
            + ", ".join(f"{r['devices']:,}: {p:.0f}" for r, p in zip(runs, per_msg, strict=True))
            + " (flat = linear in the message rate)"
        )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
