"""Benchmark 6, brokers: embedded (amqtt, hardened) vs mosquitto (our generated config), same run.

For each broker, started as a user would (`mosquitto -c` our generated files; `devicefabric broker
run`), with authentication and the fabric's ACL on:

1. messages/s, QoS 0 and QoS 1: one device publishing its own `report`, the `bridge` user
   receiving `devices/+/report`, at most `--window` in flight end to end (the measurement of
   `bench/broker_mosquitto.py`, reused), `--repeat` times;
2. connections held and connect rate: `--connections` devices connect (TCP + CONNECT with their
   own derived password + CONNACK), `--parallel` at a time, and all stay connected while the
   broker's RSS is read: connects/s, connect latency, RSS per connection (the measurement of
   `bench/broker_embedded.py`, reused), on a freshly started broker;
3. broker CPU per message during (1), from /proc.

The clients are Python (paho, asyncio sockets), so mosquitto's message rate here is bounded by
the clients as much as by the broker: the ratio understates mosquitto's headroom.

Usage: `python -m bench.brokers [--quick] [--messages N] [--connections N] ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
from typing import Any, cast

from bench import broker_embedded, broker_mosquitto
from bench.fabric import Broker, Fabric
from bench.harness import Result, count, ratio

DEVICE = broker_mosquitto.DEVICE


class _Measured:
    """The shape `broker_embedded._connections` reads: port, secret, rss_kib()."""

    def __init__(self, broker: Broker, secret: bytes) -> None:
        self.port = broker.port
        self.secret = secret
        self._proc = broker.proc

    def rss_kib(self) -> int:
        return self._proc.rss_kib()


def _start(fab: Fabric, kind: str, names: list[str]) -> Broker:
    return fab.mosquitto([DEVICE, *names]) if kind == "mosquitto" else fab.embedded()


def _one_broker(fab: Fabric, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"dev-{i:05d}" for i in range(args.connections)]
    broker = _start(fab, kind, names)
    payload = b"x" * args.payload
    out: dict[str, Any] = {"kind": kind, "rss_start_kib": broker.proc.rss_kib()}
    for qos in (0, 1):
        runs = []
        for _ in range(args.repeat):
            cpu0 = broker.proc.cpu_seconds()
            run = broker_mosquitto._run_once(
                broker.port, fab.secret, qos, args.messages, payload, window=args.window
            )
            run["broker_cpu_us_per_msg"] = (
                1e6 * (broker.proc.cpu_seconds() - cpu0) / max(1, run["received"])
            )
            runs.append(run)
        out[f"qos{qos}"] = runs
    broker.proc.stop()
    broker = _start(fab, kind, names)  # fresh: RSS per connection without the heap of (1)
    measured = cast("broker_embedded.Broker", _Measured(broker, fab.secret))
    conns = asyncio.run(broker_embedded._connections(measured, args.connections, args.parallel))
    conns["held"] = args.connections if broker.proc.alive() else 0
    out["connections"] = conns
    broker.proc.stop()
    return out


def run(args: argparse.Namespace) -> Result:
    result = Result("brokers", vars(args).copy())
    kinds = [k for k in ("mosquitto", "embedded") if k in args.brokers.split(",")]
    found: dict[str, dict[str, Any]] = {}
    with Fabric("bench-brokers-") as fab:
        for kind in kinds:
            print(f"  {kind}: {args.repeat}x {args.messages} messages at QoS 0 and 1, ", end="")
            print(f"{args.connections} connections", flush=True)
            found[kind] = _one_broker(fab, kind, args)
    result.metrics["brokers"] = found
    rates: dict[tuple[str, int], float] = {}
    for kind, data in found.items():
        for qos in (0, 1):
            runs = data[f"qos{qos}"]
            samples = [r["msgs_per_s"] for r in runs]
            result.series(f"{kind}_qos{qos}_msgs_per_s", samples)
            result.series(
                f"{kind}_qos{qos}_cpu_us_per_msg", [r["broker_cpu_us_per_msg"] for r in runs]
            )
            rates[kind, qos] = statistics.median(samples) if all(r["complete"] for r in runs) else 0
    emb, mos = found.get("embedded"), found.get("mosquitto")
    for qos in (0, 1):
        e, m = rates.get(("embedded", qos), math.nan), rates.get(("mosquitto", qos), math.nan)
        result.row(
            f"msg/s, auth+ACL, QoS {qos} (embedded vs mosquitto)",
            f"{count(e)}/s",
            floor=f"{count(m)}/s",
            ratio=ratio(e, m),
            note="one paho publisher -> one paho subscriber; mosquitto is client-bound",
        )
    if emb and mos:
        ec, mc = emb["connections"], mos["connections"]
        result.row(
            "connections held (embedded vs mosquitto)",
            f"{ec['held']:,}",
            floor=f"{mc['held']:,}",
            ratio=ratio(ec["held"], mc["held"]),
        )
        result.row(
            "connect rate, auth (embedded vs mosquitto)",
            f"{count(ec['connects_per_s'])}/s",
            floor=f"{count(mc['connects_per_s'])}/s",
            ratio=ratio(ec["connects_per_s"], mc["connects_per_s"]),
            note=f"{args.parallel} in parallel",
        )
        result.row(
            "RSS per connection (embedded vs mosquitto)",
            f"{ec['kib_per_connection']:.1f} KiB",
            floor=f"{mc['kib_per_connection']:.1f} KiB",
            ratio=ratio(ec["kib_per_connection"], mc["kib_per_connection"]),
            note=f"idle RSS {ec['rss_idle_mib']} MiB vs {mc['rss_idle_mib']} MiB",
        )
    return result.finish()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.brokers", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    p.add_argument("--quick", action="store_true", help="fewer messages and connections")
    p.add_argument("--messages", type=int, help="messages per run (default 20000; quick 5000)")
    p.add_argument("--repeat", type=int, help="runs per broker and QoS (default 3; quick 1)")
    p.add_argument("--payload", type=int, default=200, help="payload bytes (default 200)")
    p.add_argument("--window", type=int, default=500, help="most messages in flight end to end")
    p.add_argument("--connections", type=int, help="connections held (default 1000; quick 300)")
    p.add_argument("--parallel", type=int, default=50, help="connects in flight at once")
    p.add_argument("--brokers", default="mosquitto,embedded", help="comma-separated")
    return p


def configure(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.messages = args.messages or (5000 if quick else 20_000)
    args.repeat = args.repeat or (1 if quick else 3)
    args.connections = args.connections or (300 if quick else 1000)
    return args


def main(argv: list[str] | None = None) -> Result:
    return run(configure(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
