"""Benchmark 4, bridge ingest: the highest heartbeat rate the bridge sustains vs a bare subscriber.

Setup: mosquitto from our generated config plus the bench-only `loadgen` user (one raw MQTT
connection that may publish any device's heartbeat), `--devices` simulated devices (born first,
so the bridge knows them), and one consumer at a time subscribed to `devices/+/heartbeat`:
`devicefabric bridge run --control-plane local` (no resources: heartbeats never write anything
anyway, see `bench.writes`), or the floor, a bare paho subscriber (`observer`, counting in
`on_message`, no decoding) that prints its count with its monotonic clock every 0.1 s (`FLOOR`).

The load generator (`Load`) offers a rate in small paced chunks (`--chunk` messages per write, so
bursts never exceed mosquitto's default 1,000-message queue per subscriber) for `--step` s,
stepping the rate up by `--factor` from `--start` until the consumer fails. A step passes when
the consumer counted at least 99.9% of what was sent (no loss) and had counted all of it within
0.3 s of the last send (no backlog: the bridge's /metrics counter polled every 10 ms; the
floor's printed count) and, for the bridge, every device's `lastSeenAgeSeconds` on `/devices` is
within one round of the fleet plus 0.25 s of the time its last heartbeat was sent (lastSeen
correct, and no backlog still being worked off when the step ended). The sustained rate is the
highest passing step; the ratio is bridge / floor. The consumer's CPU per heartbeat at that step
(from /proc over the step) gives the fleet one bridge serves at a 15 s heartbeat with half a
core: 0.5 / (CPU s per heartbeat) x 15, an extrapolation (said so in the table), not a
measurement.

One connection carrying every heartbeat in large writes is the cheapest case for the bridge: an
upper bound. The figures the project's goals rest on are measured end to end by `scale` (N real
device connections through mosquitto, each heartbeating every second; also the bridge's CPU, RSS
and writes with a fleet at rest), and `writes` counts the control-plane writes per heartbeat.
`sharded_ingest` reuses `Load` for its replicas.

The load generator runs in this process and shares the machine's cores with mosquitto and the
consumer, so both consumers are measured under the same contention.

Usage: `python -m bench.ingest [--quick] [--devices N] [--start R] [--factor F] [--step S]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from typing import Any, Final, Protocol

from bench.clients import RawPublisher
from bench.fabric import TOPICS, Broker, Fabric
from bench.harness import Defaults, Result, count, main, ratio
from devicefabric.config.topics import DeviceTopic
from tests.support.packets import publish_packet
from tests.support.proc import Proc
from tests.support.processes import BridgeProcess
from tests.support.waiting import wait_for

HEARTBEAT_S: Final = 15
HALF_CORE: Final = 0.5
DELIVERED: Final = 0.999
LAST_SEEN_SLACK: Final = 0.25  # s: more means the bridge was still working off a backlog
DRAIN_SLACK: Final = 0.3  # s from the last message sent until all were counted (0.1 s resolution)

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


class Load:
    """Heartbeats of `devices` simulated devices, offered at a rate in paced chunks."""

    def __init__(
        self, publisher: RawPublisher, devices: int, chunk: int, prefix: str = "in"
    ) -> None:
        self.publisher = publisher
        self.names = [f"{prefix}-{i:05d}" for i in range(devices)]
        self.chunk = chunk
        self.seq = 0
        self.sent = 0
        self.last_round_at = 0.0  # monotonic time the last full round of the fleet went out

    def births(self) -> None:
        packets = []
        for n in self.names:
            birth = {"state": "online", "session": f"{n}.1", "heartbeat_s": HEARTBEAT_S}
            payload = json.dumps({**birth, "agent": "bench"}).encode()
            packets.append(publish_packet(TOPICS.status(n), payload, retain=True))
        self.publisher.send(b"".join(packets))

    def _round(self) -> list[bytes]:
        self.seq += 1
        packets = [
            publish_packet(TOPICS.heartbeat(n), f'{{"seq":{self.seq},"session":"{n}.1"}}'.encode())
            for n in self.names
        ]
        return [b"".join(packets[i : i + self.chunk]) for i in range(0, len(packets), self.chunk)]

    def offer(self, rate: float, seconds: float) -> tuple[int, float]:
        """Send at `rate` messages/s for `seconds` (whole rounds); (sent, achieved rate)."""
        start = time.monotonic()
        sent = 0
        rounds = max(1, round(rate * seconds / len(self.names)))
        for _ in range(rounds):
            for data in self._round():
                due = start + sent / rate
                while (now := time.monotonic()) < due:
                    time.sleep(min(due - now, 0.002))
                self.publisher.send(data)
                sent += min(self.chunk, len(self.names))
            self.last_round_at = time.monotonic()
        self.sent += sent
        return sent, sent / (time.monotonic() - start)


class Counter(Protocol):
    def read(self) -> int:
        """Messages the consumer has counted so far."""
        ...

    def reached(self, target: int, deadline: float) -> float | None:
        """When the count first reached `target` (monotonic), or None by `deadline`."""
        ...


class BridgeCounter:
    """`devicefabric_messages_total{kind="heartbeat"}` from the bridge's /metrics."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self.bridge = bridge

    def read(self) -> int:
        return self.bridge.heartbeats()

    def reached(self, target: int, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            if self.read() >= target:
                return time.monotonic()
            time.sleep(0.01)
        return None


class FloorCounter:
    """The count the floor prints with its monotonic clock every 0.1 s."""

    def __init__(self, floor: Proc) -> None:
        self.floor = floor

    def _lines(self) -> list[tuple[int, float]]:
        return [(int(n), float(t)) for n, t in _COUNT.findall(self.floor.log_path.read_bytes())]

    def read(self) -> int:
        time.sleep(0.15)
        lines = self._lines()
        return lines[-1][0] if lines else 0

    def reached(self, target: int, deadline: float) -> float | None:
        while True:
            for n, at in self._lines():
                if n >= target:
                    return at
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _last_seen_error(bridge: BridgeProcess, load: Load) -> float:
    """Worst |lastSeen age - (now - last round sent)| over the fleet, in seconds."""
    asked = time.monotonic()
    devices = [d for d in bridge.devices().values() if d["device"] in set(load.names)]
    if len(devices) < len(load.names):
        return math.inf
    expected = asked - load.last_round_at
    ages = [d.get("lastSeenAgeSeconds") for d in devices]
    if not all(isinstance(a, int | float) for a in ages):
        return math.inf
    return max(abs(float(a) - expected) for a in ages if a is not None)


def _ramp(
    name: str,
    load: Load,
    counter: Counter,
    consumer: Proc,
    args: argparse.Namespace,
    *,
    bridge: BridgeProcess | None,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    rate = args.start
    while rate <= args.max_rate:
        n0 = counter.read()
        cpu0 = consumer.cpu_seconds()
        sent, achieved = load.offer(rate, args.step)
        cpu1 = consumer.cpu_seconds()
        done = counter.reached(n0 + sent, load.last_round_at + 1.0)
        time.sleep(max(0.0, load.last_round_at + 1.0 - time.monotonic()))
        received = counter.read() - n0
        round_s = len(load.names) / achieved
        lag = done - load.last_round_at if done is not None else math.inf
        step: dict[str, Any] = {
            "offered_per_s": round(achieved),
            "sent": sent,
            "received": received,
            "delivered": received / sent if sent else 0.0,
            "drain_lag_s": lag,
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_msg": 1e6 * (cpu1 - cpu0) / max(1, received),
            "cpu_percent": 100 * (cpu1 - cpu0) / (sent / achieved),
        }
        ok = step["delivered"] >= DELIVERED and lag <= DRAIN_SLACK
        if bridge is not None:
            error = _last_seen_error(bridge, load)
            step["last_seen_error_s"] = error
            ok = ok and error <= round_s + LAST_SEEN_SLACK
        step["ok"] = ok
        steps.append(step)
        print(
            f"    {name}: {step['offered_per_s']:>7,}/s offered, {step['delivered']:.1%} counted, "
            f"all in {lag:.2f} s after the last, CPU {step['cpu_percent']:.0f}% ({step['cpu_us_per_msg']:.1f} us/msg)"
            + (f", lastSeen error {step.get('last_seen_error_s', 0):.2f} s" if bridge else "")
            + ("" if ok else "  <- fails"),
            flush=True,
        )
        if not ok:
            break
        rate *= args.factor
        time.sleep(0.5)
    passed = [s for s in steps if s["ok"]]
    best = max(passed, key=lambda s: s["offered_per_s"]) if passed else None
    return {"steps": steps, "best": best}


def _bridge_run(
    fab: Fabric, broker: Broker, load: Load, args: argparse.Namespace
) -> dict[str, Any]:
    bridge = fab.bridge(broker, state_dir=fab.workdir / "state-ingest", log_level="WARNING")
    bridge.wait_ready()
    load.births()
    wait_for(
        lambda: (
            bridge.metrics().value("devicefabric_devices", state="connected") >= len(load.names)
        ),
        60,
        0.2,
        "the bridge to know every device",
    )
    out = _ramp("bridge", load, BridgeCounter(bridge), bridge, args, bridge=bridge)
    out["rss_kib"] = bridge.rss_kib()
    bridge.check()
    bridge.stop()
    return out


def _floor_run(fab: Fabric, broker: Broker, load: Load, args: argparse.Namespace) -> dict[str, Any]:
    argv = [str(broker.port), fab.password("observer"), TOPICS.all_devices(DeviceTopic.HEARTBEAT)]
    floor = fab.python("floor", FLOOR, *argv)
    wait_for(lambda: floor.said("subscribed"), 10, what="the floor to subscribe")
    out = _ramp("floor", load, FloorCounter(floor), floor, args, bridge=None)
    out["rss_kib"] = floor.rss_kib()
    floor.stop()
    return out


DEFAULTS: Final[Defaults] = {"factor": (1.4, 2.0), "step": (2.5, 2.0)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=2000, help="simulated devices (default 2000)")
    p.add_argument("--start", type=float, default=10_000.0, help="first offered rate (msg/s)")
    p.add_argument("--factor", type=float, help="rate factor per step")
    p.add_argument("--step", type=float, help="seconds per step")
    p.add_argument("--max-rate", type=float, default=200_000.0, help="stop stepping here")
    p.add_argument("--chunk", type=int, default=50, help="messages per socket write")


def run(args: argparse.Namespace, result: Result) -> Result:
    with Fabric("bench-ingest-") as fab:
        broker = fab.mosquitto([], privileged=True)
        publisher = RawPublisher(broker, fab.secret)
        fab.callback(publisher.close)
        load = Load(publisher, args.devices, args.chunk)
        print(f"  {args.devices:,} devices; steps x{args.factor} from {args.start:,}/s, "
              f"{args.step:.0f} s each", flush=True)  # fmt: skip
        runs = {"floor": _floor_run(fab, broker, load, args)}
        runs["bridge"] = _bridge_run(fab, broker, load, args)
    result.metrics["runs"] = runs
    for who, data in runs.items():
        result.series(f"{who}_offered_per_s", [s["offered_per_s"] for s in data["steps"]])
        result.series(f"{who}_cpu_us_per_msg", [s["cpu_us_per_msg"] for s in data["steps"]])
    b, f = runs["bridge"]["best"], runs["floor"]["best"]
    b_rate = float(b["offered_per_s"]) if b else math.nan
    f_rate = float(f["offered_per_s"]) if f else math.nan
    capped = f is not None and f is runs["floor"]["steps"][-1]
    result.row(
        "one raw connection: heartbeats/s sustained (bridge vs bare paho)",
        f"{count(b_rate)}/s",
        floor=f"{count(f_rate)}/s" + (" (not saturated)" if capped else ""),
        ratio=ratio(b_rate, f_rate),
        goal=">= 0.5x floor",
        met=b_rate >= 0.5 * f_rate if b and f else False,
        note=f"no loss, no backlog, lastSeen within a round; the next step (x{args.factor}) "
        f"failed; the load generator shares the {len(os.sched_getaffinity(0))} cores",
    )
    if b:
        cpu = b["cpu_us_per_msg"] / 1e6
        fleet = HALF_CORE / cpu * HEARTBEAT_S
        f_cpu = f["cpu_us_per_msg"] if f else math.nan
        result.versus(
            "one raw connection: CPU per heartbeat (bridge vs bare paho), an upper bound",
            b["cpu_us_per_msg"],
            f_cpu,
            "{:.1f} us".format,
            note=f"at the highest passing step; bridge RSS {runs['bridge']['rss_kib'] / 1024:.0f} MiB",
        )
        result.row(
            f"one raw connection: devices at {HEARTBEAT_S} s per half core (extrapolated; the "
            "end-to-end figure is the `scale` row)",
            f"{count(fleet)}",
            note="extrapolated from CPU per heartbeat (0.5 core / CPU per msg x 15 s), not run; "
            "one connection carries every heartbeat in large writes, so this is an upper bound",
        )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
