"""Benchmark 6, brokers: embedded (amqtt, hardened) vs mosquitto (our generated config), same run.

For each broker, started as a user would (`mosquitto -c` our generated files; `devicefabric broker
run`), with authentication and the fabric's ACL on:

1. messages/s, QoS 0 and QoS 1, `--repeat` times: one device (`bench-dev`) publishing its own
   `report`, the `bridge` user receiving `devices/+/report`, both paho clients with their network
   loops in threads. At most `--window` messages are published but not yet received (end-to-end
   flow control: mosquitto queues at most 1,000 per subscriber by default and drops the rest, so
   an unbounded publisher would measure drops). The clock runs from the first publish to the
   last message received; the rate is messages / seconds. The broker's CPU per message is read
   from /proc over the same run;
2. connections held and connect rate, on a freshly started broker (RSS per connection without
   the heap of (1)): `--connections` devices connect (TCP + CONNECT with their own derived
   password + CONNACK, raw asyncio sockets), `--parallel` at a time, and all stay connected
   while the broker's RSS is read: connects/s, connect latency, RSS per connection.

The clients are Python, so mosquitto's message rate here is bounded by the clients as much as by
the broker: the ratio understates mosquitto's headroom.

Usage: `python -m bench.brokers [--quick] [--messages N] [--connections N] ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import threading
import time
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.fabric import HOST, TOPICS, Broker, Fabric, cpu_seconds, rss_kib
from bench.harness import Defaults, Result, main, per_s, percentile
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.topics import DeviceTopic
from tests.support.packets import CONNACK_ACCEPTED, connect_packet

DEVICE: Final = "bench-dev"


def _paho(broker: Broker, fab: Fabric, user: str, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(user, fab.password(user))
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else connected.set()
    client.connect(HOST, broker.port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        raise RuntimeError(f"{user} could not connect")
    return client


def throughput(fab: Fabric, broker: Broker, qos: int, args: argparse.Namespace) -> dict[str, Any]:
    """One publisher -> one subscriber, `args.messages` at `qos`, at most `args.window` in flight."""
    received = 0
    done = threading.Event()
    lock = threading.Lock()
    in_flight = threading.Semaphore(args.window)

    def on_message(_c: paho.Client, _u: Any, _m: paho.MQTTMessage) -> None:
        nonlocal received
        with lock:
            received += 1
            if received >= args.messages:
                done.set()
        in_flight.release()

    subscribed = threading.Event()
    sub = _paho(broker, fab, BRIDGE_USER, f"bridge_bench-{qos}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.subscribe(TOPICS.all_devices(DeviceTopic.REPORT), qos=qos)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    pub = _paho(broker, fab, DEVICE, DEVICE)
    topic, payload = TOPICS.report(DEVICE), b"x" * args.payload
    cpu0, start = cpu_seconds(broker), time.perf_counter()
    infos = []
    for _ in range(args.messages):
        if not in_flight.acquire(timeout=10):
            break  # messages were dropped on the way: stop and report what arrived
        infos.append(pub.publish(topic, payload, qos=qos))
    complete = done.wait(10)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(broker) - cpu0
    if qos:
        for info in infos:
            info.wait_for_publish(5)
    for client in (pub, sub):
        client.disconnect()
        client.loop_stop()
    return {
        "qos": qos,
        "received": received,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(received / elapsed) if elapsed else 0,
        "complete": complete,
        "broker_cpu_us_per_msg": 1e6 * cpu / max(1, received),
    }


async def connections(fab: Fabric, broker: Broker, args: argparse.Namespace) -> dict[str, Any]:
    """`args.connections` devices connect, `args.parallel` at a time, and stay while RSS is read."""
    names = [f"dev-{i:05d}" for i in range(args.connections)]
    gate = asyncio.Semaphore(args.parallel)
    writers: list[asyncio.StreamWriter] = []
    latencies: list[float] = []

    async def one(name: str) -> None:
        packet = connect_packet(name, name, fab.password(name), keepalive=600)
        async with gate:
            begin = time.perf_counter()
            reader, writer = await asyncio.open_connection(HOST, broker.port)
            writer.write(packet)
            connack = await reader.readexactly(4)
            latencies.append(time.perf_counter() - begin)
            writers.append(writer)
            if connack != CONNACK_ACCEPTED:
                raise RuntimeError(f"{name}: CONNACK {connack!r}")

    rss_idle = rss_kib(broker)
    start = time.perf_counter()
    try:
        await asyncio.gather(*(one(name) for name in names))
        total = time.perf_counter() - start
        await asyncio.sleep(1.0)  # a measurement pause before reading RSS, not a wait to settle
        rss_connected = rss_kib(broker)
    finally:
        for writer in writers:
            writer.close()
    return {
        "seconds": round(total, 3),
        "connects_per_s": round(len(names) / total),
        "latency_ms_p50": round(1000 * percentile(latencies, 50), 2),
        "latency_ms_p99": round(1000 * percentile(latencies, 99), 2),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "kib_per_connection": round((rss_connected - rss_idle) / len(names), 1),
        "held": len(names) if broker.running else 0,
    }


def _one_broker(fab: Fabric, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"dev-{i:05d}" for i in range(args.connections)]

    def start() -> Broker:
        return fab.mosquitto([DEVICE, *names]) if kind == "mosquitto" else fab.embedded()

    broker = start()
    out: dict[str, Any] = {"kind": kind, "rss_start_kib": rss_kib(broker)}
    for qos in (0, 1):
        out[f"qos{qos}"] = [throughput(fab, broker, qos, args) for _ in range(args.repeat)]
    broker.stop()
    broker = start()  # fresh: RSS per connection without the heap of (1)
    out["connections"] = asyncio.run(connections(fab, broker, args))
    broker.stop()
    return out


DEFAULTS: Final[Defaults] = {
    "messages": (20_000, 5000),
    "repeat": (3, 1),
    "connections": (1000, 300),
}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, help="messages per run")
    p.add_argument("--repeat", type=int, help="runs per broker and QoS")
    p.add_argument("--payload", type=int, default=200, help="payload bytes (default 200)")
    p.add_argument("--window", type=int, default=500, help="most messages in flight end to end")
    p.add_argument("--connections", type=int, help="connections held")
    p.add_argument("--parallel", type=int, default=50, help="connects in flight at once")
    p.add_argument("--brokers", default="mosquitto,embedded", help="comma-separated")


def run(args: argparse.Namespace, result: Result) -> Result:
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
        result.versus(
            f"msg/s, auth+ACL, QoS {qos} (embedded vs mosquitto)", e, m, per_s,
            note="one paho publisher -> one paho subscriber; mosquitto is client-bound",
        )  # fmt: skip
    if emb and mos:
        ec, mc = emb["connections"], mos["connections"]
        result.versus(
            "connections held (embedded vs mosquitto)", ec["held"], mc["held"], "{:,}".format
        )
        result.versus(
            "connect rate, auth (embedded vs mosquitto)",
            ec["connects_per_s"], mc["connects_per_s"], per_s, note=f"{args.parallel} in parallel",
        )  # fmt: skip
        result.versus(
            "RSS per connection (embedded vs mosquitto)",
            ec["kib_per_connection"], mc["kib_per_connection"], "{:.1f} KiB".format,
            note=f"idle RSS {ec['rss_idle_mib']} MiB vs {mc['rss_idle_mib']} MiB",
        )  # fmt: skip
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
