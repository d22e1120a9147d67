"""Benchmark 10, sharded bridge ingest: heartbeats/s and CPU per replica with 1, 2 and 3 replicas, same run.

The sharded bridge (`--shards`) spreads the *writes* over replicas; every replica still
subscribes to every device's messages and tracks every device (a warm standby per shard, so a
handover writes nothing for unchanged devices: see docs/scale.md). This measures what that
design costs: each replica's ingest rate and CPU per heartbeat, with the broker fanning every
heartbeat out to every replica.

For R in `--replicas` (default 1,2,3): a fresh API server fake (tests/support/fakeapi), R processes of
`devicefabric bridge run --control-plane kube --shards 6`, all ready and holding their shards;
then the raw-socket load generator of `bench.ingest` offers `--offered` heartbeats/s (QoS 0,
`--devices` devices, one socket write per round of the fleet) through one mosquitto for
`--warmup` + `--window` s. Per replica over the window: heartbeats
ingested/s (`devicefabric_messages_total{kind="heartbeat"}`), CPU % of one core, CPU us per
heartbeat; and the broker's CPU. On a 2-core machine the replicas share the cores with the broker
and the load generator: the per-replica figure with 3 replicas is a lower bound.

Usage: `python -m bench.sharded_ingest [--quick] [--offered N] [--replicas 1,2,3]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Final

from bench.clients import RawPublisher
from bench.fabric import Broker, Fabric, cpu_seconds
from bench.harness import Defaults, Result, count, main
from bench.ingest import Load
from tests.support.fakeapi import BRIDGE_USER, FakeApiServer
from tests.support.processes import BridgeProcess
from tests.support.waiting import wait_for

SHARDS: Final = 6
LEASE_ARGS: Final = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")


def _held(bridges: list[BridgeProcess]) -> bool:
    for bridge in bridges:
        bridge.check()
    return all(bridge.readyz().get("role") == "leader" for bridge in bridges)


def replicas_run(
    fab: Fabric, broker: Broker, replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    with FakeApiServer(bookmark_interval=1.0) as api:
        kubeconfig = api.write_kubeconfig(
            fab.workdir / f"kubeconfig-{replicas}", user=f"{BRIDGE_USER}#bench"
        )
        bridges = [
            fab.bridge(
                broker,
                control_plane="kube",
                kubeconfig=kubeconfig,
                args=["--shards", str(SHARDS), *LEASE_ARGS],
                log_level="WARNING",
            )
            for _ in range(replicas)
        ]
        for bridge in bridges:
            bridge.wait_ready()
        wait_for(lambda: _held(bridges), 30, 0.1, "every replica holding a shard")
        publisher = RawPublisher(broker, fab.secret)
        load = Load(publisher, args.devices, chunk=args.devices, prefix="hb")
        load.offer(args.offered, args.warmup)
        broker_cpu0 = cpu_seconds(broker)
        before = [(b.heartbeats(), b.cpu_seconds()) for b in bridges]
        t0 = time.monotonic()
        _, achieved = load.offer(args.offered, args.window)
        wall = time.monotonic() - t0
        time.sleep(0.2)  # let the last writes through the broker before reading the counters
        after = [(b.heartbeats(), b.cpu_seconds()) for b in bridges]
        broker_cpu = cpu_seconds(broker) - broker_cpu0
        publisher.close()
        per = []
        for (n0, c0), (n1, c1) in zip(before, after, strict=True):
            received = n1 - n0
            per.append(
                {
                    "per_s": received / wall,
                    "cpu_percent": round(100 * (c1 - c0) / wall, 1),
                    "cpu_us_per_msg": round(1e6 * (c1 - c0) / received, 2) if received else None,
                }
            )
        for bridge in bridges:
            bridge.stop()
    return {
        "replicas": replicas,
        "offered_per_s": round(achieved),
        "seconds": round(wall, 3),
        "per_replica": per,
        "broker_cpu_percent": round(100 * broker_cpu / wall, 1),
    }


DEFAULTS: Final[Defaults] = {"warmup": (3.0, 2.0), "window": (8.0, 4.0)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offered", type=int, default=10_000, help="heartbeats/s offered")
    p.add_argument("--devices", type=int, default=1000, help="devices the load comes from")
    p.add_argument(
        "--replicas",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 3],
        help="replica counts to run, comma-separated (default 1,2,3)",
    )
    p.add_argument("--warmup", type=float, help="seconds before the window")
    p.add_argument("--window", type=float, help="measured seconds")


def run(args: argparse.Namespace, result: Result) -> Result:
    runs = []
    with Fabric("bench-sharded-") as fab:
        broker = fab.mosquitto([], privileged=True)
        for replicas in args.replicas:
            data = replicas_run(fab, broker, replicas, args)
            print(f"  {replicas} replica(s): {json.dumps(data)}")
            runs.append(data)
    result.metrics["runs"] = runs
    for data in runs:
        per = data["per_replica"]
        mean = sum(p["per_s"] for p in per) / len(per)
        cpu = "/".join(f"{p['cpu_percent']}%" for p in per)
        us = "/".join(str(p["cpu_us_per_msg"]) for p in per)
        result.row(
            f"bridge ingest per replica, {data['replicas']} replica(s), --shards {SHARDS}",
            f"{count(mean)}/s",
            note=(
                f"offered {count(data['offered_per_s'])}/s; CPU {cpu} of a core; {us} us/heartbeat;"
                f" broker {data['broker_cpu_percent']}%"
            ),
        )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
