"""Benchmark 4, bridge ingest: heartbeats/s the bridge handles vs a bare paho subscriber, same run.

Everything runs as a user would run it, in separate processes, against mosquitto from our
generated config (with the bench-only `loadgen` user, which may publish any device's heartbeat):

1. **Saturated ingest.** A raw-socket load generator offers `--offered` heartbeats/s (QoS 0,
   `--devices` distinct devices, valid payloads) for `--warmup` + `--window` seconds. Measured over
   the window, with nothing else consuming: (a) `devicefabric bridge run --control-plane local`
   (its `devicefabric_messages_total{kind="heartbeat"}`), then (b) the floor, a bare paho
   subscriber (`observer`, `devices/+/heartbeat`, counting in `on_message`, no decoding). Rates,
   the consumer's CPU (% of one core) and CPU microseconds per heartbeat. The ratio is
   bridge / floor.
2. **A fleet at rest.** `--fleet` devices (one DeviceProcess each, applied with `devicefabric
   apply`), born live, then heartbeating every `--heartbeat` s (spread evenly) for `--idle` s after
   the initial status writes settled: the bridge's CPU % and RSS, and its control-plane writes in
   the window (must be 0).

Usage: `python -m bench.bridge_ingest [--quick] [--offered N] [--fleet N] [--idle S] ...`.
Prints a table and writes `bench/results/bridge_ingest.json`. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from typing import Any, Final

from bench.fabric import (
    TOPICS,
    BridgeProc,
    Broker,
    Fabric,
    Proc,
    RawPublisher,
    metric,
    publish_packet,
    wait_until,
)
from bench.harness import Result, count, ratio
from devicefabric.config.topics import DeviceTopic

FLOOR: Final = r"""
import sys, threading, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

port, password, topic_filter = int(sys.argv[1]), sys.argv[2], sys.argv[3]
count = 0

def on_message(_c, _u, _m):
    global count
    count += 1

client = paho.Client(CallbackAPIVersion.VERSION2, client_id="observer_bench-floor")
client.username_pw_set("observer", password)
client.on_message = on_message
client.on_connect = lambda c, *_a: c.subscribe(topic_filter, 0)
client.on_subscribe = lambda *_a: print("subscribed", flush=True)
client.connect("127.0.0.1", port, 60)

def report():
    while True:
        print(f"count {count} {time.monotonic():.6f}", flush=True)
        time.sleep(0.1)

threading.Thread(target=report, daemon=True).start()
client.loop_forever()
"""
_COUNT: Final = re.compile(rb"^count (\d+) ([0-9.]+)$", re.MULTILINE)


def heartbeat_blob(devices: int) -> bytes:
    """One pre-encoded QoS 0 heartbeat PUBLISH per device, concatenated."""
    return b"".join(
        publish_packet(TOPICS.heartbeat(f"hb-{i:05d}"), b'{"session":"bench.1","seq":1}')
        for i in range(devices)
    )


class Offer:
    """Sends `blob` (`per_blob` messages) repeatedly at `rate` messages/s from this thread."""

    def __init__(self, publisher: RawPublisher, blob: bytes, per_blob: int, rate: float) -> None:
        self.publisher, self.blob, self.per_blob, self.rate = publisher, blob, per_blob, rate
        self.sent = 0

    def run_for(self, seconds: float) -> float:
        """Offer for `seconds`; returns the rate achieved (messages handed to the kernel / s)."""
        start = time.monotonic()
        end = start + seconds
        sent = 0
        while (now := time.monotonic()) < end:
            due = start + sent / self.rate
            if now < due:
                time.sleep(min(due - now, 0.01))
                continue
            self.publisher.send(self.blob)
            sent += self.per_blob
        self.sent += sent
        return sent / (time.monotonic() - start)


def _floor_count(proc: Proc) -> tuple[int, float]:
    found = _COUNT.findall(proc.log_path.read_bytes())
    if not found:
        return 0, time.monotonic()
    n, at = found[-1]
    return int(n), float(at)


def saturated(fab: Fabric, broker: Broker, args: argparse.Namespace, who: str) -> dict[str, Any]:
    """One consumer (`bridge` or `floor`) under the offered load; rates over the window."""
    consumer: Proc
    if who == "bridge":
        bridge = fab.bridge(broker, state_dir=fab.workdir / f"state-{who}", log_level="WARNING")
        bridge.wait_ready()
        consumer = bridge

        def sample() -> tuple[int, float]:
            return int(metric(bridge.metrics(), "devicefabric_messages_total", kind="heartbeat")), (
                time.monotonic()
            )
    else:
        argv = [
            str(broker.port),
            fab.password("observer"),
            TOPICS.all_devices(DeviceTopic.HEARTBEAT),
        ]
        consumer = fab.python("floor", FLOOR, *argv)

        def floor_subscribed() -> bool:
            consumer.check()
            return b"subscribed" in consumer.log_path.read_bytes()

        wait_until(floor_subscribed, 10, "floor")

        def sample() -> tuple[int, float]:
            return _floor_count(consumer)

    publisher = RawPublisher(broker, fab.secret)
    offer = Offer(publisher, heartbeat_blob(args.devices), args.devices, args.offered)
    broker_cpu0 = broker.proc.cpu_seconds()
    offer.run_for(args.warmup)
    n0, t0 = sample()
    cpu0 = consumer.cpu_seconds()
    achieved = offer.run_for(args.window)
    n1, t1 = sample()
    cpu1 = consumer.cpu_seconds()
    broker_cpu = broker.proc.cpu_seconds() - broker_cpu0
    publisher.close()
    received = n1 - n0
    wall = t1 - t0
    out = {
        "consumer": who,
        "offered_per_s": round(achieved),
        "received": received,
        "seconds": round(wall, 3),
        "per_s": received / wall if wall > 0 else 0.0,
        "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1) if wall > 0 else 0.0,
        "cpu_us_per_msg": round(1e6 * (cpu1 - cpu0) / received, 2) if received else None,
        "rss_kib": consumer.rss_kib(),
        "broker_cpu_percent": round(100 * broker_cpu / (args.warmup + args.window), 1),
    }
    consumer.stop()
    return out


def manifests(names: list[str]) -> str:
    docs = [
        "apiVersion: devicefabric.io/v1alpha1\nkind: DeviceProcess\n"
        f"metadata:\n  name: p-{name}\nspec:\n  deviceName: {name}\n  command: [sleep, '1000']\n"
        for name in names
    ]
    return "---\n".join(docs)


def fleet_at_rest(fab: Fabric, broker: Broker, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"fleet-{i:05d}" for i in range(args.fleet)]
    state = fab.workdir / "state-fleet"
    path = fab.workdir / "fleet.yaml"
    path.write_text(manifests(names), encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "devicefabric", "apply", "-f", str(path), "--state-dir", str(state)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    bridge: BridgeProc = fab.bridge(
        broker,
        state_dir=state,
        log_level="WARNING",
        args=["--write-qps", "500", "--write-burst", "500"],
    )
    bridge.wait_ready(timeout=120)
    publisher = RawPublisher(broker, fab.secret)
    births = b"".join(
        publish_packet(
            TOPICS.status(n),
            json.dumps(
                {
                    "state": "online",
                    "session": f"{n}.1",
                    "heartbeat_s": args.heartbeat,
                    "agent": "b",
                }
            ).encode(),
            retain=True,
        )
        for n in names
    )
    publisher.send(births)
    beats = [
        publish_packet(TOPICS.heartbeat(n), json.dumps({"session": f"{n}.1", "seq": 1}).encode())
        for n in names
    ]
    per_second = max(1, round(len(names) / args.heartbeat))
    cursor = 0

    def beat_one_second() -> None:
        nonlocal cursor
        chunk = [beats[(cursor + i) % len(beats)] for i in range(per_second)]
        cursor += per_second
        publisher.send(b"".join(chunk))
        time.sleep(1.0)

    def settled() -> bool:
        beat_one_second()
        m = bridge.metrics()
        return (
            metric(m, "devicefabric_devices", state="connected") == len(names)
            and metric(m, "devicefabric_queue_depth") == 0
        )

    started = time.monotonic()
    wait_until(settled, 300, "the fleet's initial statuses to be written", 0.0)
    setup_s = time.monotonic() - started
    m0 = bridge.metrics()
    cpu0, t0 = bridge.cpu_seconds(), time.monotonic()
    rss = []
    while time.monotonic() - t0 < args.idle:
        beat_one_second()
        rss.append(bridge.rss_kib())
    cpu1, t1 = bridge.cpu_seconds(), time.monotonic()
    m1 = bridge.metrics()
    publisher.close()

    def delta(name: str, **labels: str) -> float:
        return metric(m1, name, **labels) - metric(m0, name, **labels)

    out = {
        "devices": len(names),
        "heartbeat_s": args.heartbeat,
        "setup_seconds": round(setup_s, 1),
        "window_seconds": round(t1 - t0, 1),
        "heartbeats_in_window": delta("devicefabric_messages_total", kind="heartbeat"),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "rss_kib_max": max(rss),
        "rss_kib_last": rss[-1],
        "status_writes_in_window": delta("devicefabric_controlplane_writes_total", kind="status"),
        "event_writes_in_window": delta("devicefabric_controlplane_writes_total", kind="event"),
        "writes_at_setup": metric(m0, "devicefabric_controlplane_writes_total", kind="status"),
    }
    bridge.stop()
    return out


def run(args: argparse.Namespace) -> Result:
    result = Result("bridge_ingest", vars(args).copy())
    with Fabric("bench-bridge-") as fab:
        broker = fab.mosquitto([], privileged=True)
        print(f"  saturated ingest: {args.offered:,}/s offered over {args.devices} devices")
        runs = {who: saturated(fab, broker, args, who) for who in ("bridge", "floor")}
        for who, data in runs.items():
            print(f"    {who}: {json.dumps(data)}")
        print(f"  fleet at rest: {args.fleet} devices, heartbeat {args.heartbeat} s, {args.idle} s")
        fleet = fleet_at_rest(fab, broker, args)
        print(f"    {json.dumps(fleet)}")
    result.metrics.update({"saturated": runs, "fleet": fleet})
    b, f = runs["bridge"], runs["floor"]
    result.row(
        "heartbeats/s ingested (bridge vs bare paho)",
        f"{count(b['per_s'])}/s",
        floor=f"{count(f['per_s'])}/s",
        ratio=ratio(b["per_s"], f["per_s"]),
        note=f"offered {count(b['offered_per_s'])}/s; CPU {b['cpu_percent']}% vs {f['cpu_percent']}%",
    )
    result.row(
        "CPU per heartbeat (bridge vs bare paho)",
        f"{b['cpu_us_per_msg']} us",
        floor=f"{f['cpu_us_per_msg']} us",
        ratio=ratio(b["cpu_us_per_msg"] or 0, f["cpu_us_per_msg"] or 0),
    )
    result.row(
        f"bridge CPU, {fleet['devices']:,} devices @ {fleet['heartbeat_s']} s",
        f"{fleet['cpu_percent']}%",
        note=f"{fleet['window_seconds']} s window, {fleet['heartbeats_in_window']:.0f} heartbeats",
    )
    result.row(
        f"bridge RSS, {fleet['devices']:,} devices + resources",
        f"{fleet['rss_kib_max'] / 1024:.1f} MiB",
    )
    writes = fleet["status_writes_in_window"] + fleet["event_writes_in_window"]
    result.row(
        "control-plane writes while heartbeating",
        f"{writes:.0f}",
        goal="0",
        met=writes == 0,
        note=f"{fleet['writes_at_setup']:.0f} status writes at setup (births)",
    )
    return result.finish()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.bridge_ingest",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    p.add_argument("--quick", action="store_true", help="shorter windows, smaller fleet")
    p.add_argument("--offered", type=int, default=60_000, help="heartbeats/s offered")
    p.add_argument("--devices", type=int, default=1000, help="devices the load comes from")
    p.add_argument("--warmup", type=float, help="seconds before the window (default 3; quick 2)")
    p.add_argument("--window", type=float, help="measured seconds (default 8; quick 4)")
    p.add_argument("--fleet", type=int, help="devices at rest (default 1000; quick 300)")
    p.add_argument("--heartbeat", type=int, default=15, help="their heartbeat period (s)")
    p.add_argument("--idle", type=float, help="seconds at rest (default 60; quick 20)")
    return p


def configure(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.warmup = args.warmup or (2.0 if quick else 3.0)
    args.window = args.window or (4.0 if quick else 8.0)
    args.fleet = args.fleet or (300 if quick else 1000)
    args.idle = args.idle or (20.0 if quick else 60.0)
    return args


def main(argv: list[str] | None = None) -> Result:
    return run(configure(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
