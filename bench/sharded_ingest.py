"""Sharded bridge ingest: heartbeats/s and CPU per replica with 1, 2 and 3 replicas, same run.

The sharded bridge (`--shards`) spreads the *writes* over replicas; every replica still
subscribes to every device's messages and tracks every device (a warm standby per shard, so a
handover writes nothing for unchanged devices: see docs/scale.md). This measures what that
design costs: each replica's ingest rate and CPU per heartbeat, with the broker fanning every
heartbeat out to every replica.

For R in `--replicas` (default 1,2,3): a fresh API server fake (tests/kube), R processes of
`devicefabric bridge run --control-plane kube --shards 6`, all ready and holding their shards;
then a raw-socket load generator offers `--offered` heartbeats/s (QoS 0, `--devices` devices)
through one mosquitto for `--warmup` + `--window` s. Per replica over the window: heartbeats
ingested/s (`devicefabric_messages_total{kind="heartbeat"}`), CPU % of one core, CPU us per
heartbeat; and the broker's CPU. On a 2-core machine the replicas share the cores with the broker
and the load generator: the per-replica figure with 3 replicas is a lower bound.

Usage: `python -m bench.sharded_ingest [--quick] [--offered N] [--replicas 1,2,3]`. Writes
`bench/results/sharded_ingest.json`. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Final

from bench.bridge_ingest import Offer, heartbeat_blob
from bench.fabric import BridgeProc, Broker, Fabric, RawPublisher, metric, wait_until
from bench.harness import Result, count

SHARDS: Final = 6
LEASE_ARGS: Final = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")


def _held(bridges: list[BridgeProc]) -> bool:
    roles = []
    for bridge in bridges:
        bridge.check()
        status, body = bridge.get("/readyz", timeout=2)
        roles.append(status == 200 and json.loads(body).get("role") == "leader")
    return all(roles)


def replicas_run(
    fab: Fabric, broker: Broker, replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    from tests.support.fakeapi import BRIDGE_USER, FakeApiServer  # noqa: PLC0415

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
        wait_until(lambda: _held(bridges), 30, "every replica holding a shard", 0.1)
        publisher = RawPublisher(broker, fab.secret)
        offer = Offer(publisher, heartbeat_blob(args.devices), args.devices, args.offered)
        offer.run_for(args.warmup)
        broker_cpu0 = broker.proc.cpu_seconds()
        before = [
            (metric(b.metrics(), "devicefabric_messages_total", kind="heartbeat"), b.cpu_seconds())
            for b in bridges
        ]
        t0 = time.monotonic()
        achieved = offer.run_for(args.window)
        wall = time.monotonic() - t0
        time.sleep(0.2)  # let the last blobs through the broker before reading the counters
        after = [
            (metric(b.metrics(), "devicefabric_messages_total", kind="heartbeat"), b.cpu_seconds())
            for b in bridges
        ]
        broker_cpu = broker.proc.cpu_seconds() - broker_cpu0
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


def run(args: argparse.Namespace) -> Result:
    result = Result("sharded_ingest", vars(args).copy())
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.sharded_ingest",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    p.add_argument("--quick", action="store_true", help="shorter windows")
    p.add_argument("--offered", type=int, default=10_000, help="heartbeats/s offered")
    p.add_argument("--devices", type=int, default=1000, help="devices the load comes from")
    p.add_argument(
        "--replicas",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 3],
        help="replica counts to run, comma-separated (default 1,2,3)",
    )
    p.add_argument("--warmup", type=float, help="seconds before the window (default 3; quick 2)")
    p.add_argument("--window", type=float, help="measured seconds (default 8; quick 4)")
    return p


def main(argv: list[str] | None = None) -> Result:
    args = parser().parse_args(argv)
    args.warmup = args.warmup or (2.0 if args.quick else 3.0)
    args.window = args.window or (4.0 if args.quick else 8.0)
    return run(args)


if __name__ == "__main__":
    main()
