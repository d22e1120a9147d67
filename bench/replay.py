"""Benchmark 11, a bridge restart over a broker that cuts the retained replay short.

What it guards: with mosquitto's default per-client queue
(`max_queued_messages 1000`) a restarted bridge of a 5,000-device fleet received only part of the
retained replay and republished every `desired` document it had not seen. The generated config
now sizes the queue for the fleet; this bench takes the worst case, a bound that is too small.

Setup per N (`--sizes`, default 5,000 and 10,000): mosquitto from our generated config for N
devices with `max_queued_messages` set back to `--queue` (default 1,000, mosquitto's own
default); N DeviceProcesses (one per device) in a local state directory; the `desired` document
of every device, exactly as the bridge builds it, published retained beforehand (as an earlier
bridge left it). No agent runs, so no device has a retained `status`.

Measured: `devicefabric bridge run` started on that state: time until `/readyz` (which includes
reading the replay back), then, after `--settle` s, the bridge's own counters: desired documents
published (goal 0: every one was retained), documents re-read and confirmed missing.

Usage: `python -m bench.replay [--quick] [--sizes 5000,10000] [--queue 1000]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.fabric import HOST, Fabric
from bench.harness import Defaults, Result, count, main, ms
from bench.planes import LocalPlane
from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.mirroring import build_desired, device_of
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.topics import Topics
from devicefabric.config.wire import encode

T: Final = Topics()
COMMAND: Final = ["sleep", "infinity"]


def _seed(port: int, password: str, resources: list[Resource]) -> None:
    """Publish every device's desired document, retained, as the bridge would have."""
    by_device: dict[str, list[Resource]] = defaultdict(list)
    for res in resources:
        device = device_of(res)
        if device is not None:
            by_device[device].append(res)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bridge_bench-seed")
    client.username_pw_set(BRIDGE_USER, password)
    client.connect(HOST, port)
    client.loop_start()
    try:
        infos = [
            client.publish(T.desired(d), encode(build_desired(d, rs)), qos=1, retain=True)
            for d, rs in by_device.items()
        ]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.loop_stop()
        client.disconnect()


def _one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"rp-{i:05d}" for i in range(n)]
    with Fabric(prefix="bench-replay-") as fab:
        broker = fab.mosquitto(names, max_queued_messages=args.queue)
        plane = fab.plane(broker, "local")
        assert isinstance(plane, LocalPlane)
        plane.apply_many([(name, name, COMMAND) for name in names])
        _seed(broker.port, fab.password(BRIDGE_USER), list(plane.store.load_all().values()))
        started = time.monotonic()
        bridge = fab.bridge(broker, log_level="WARNING", **plane.bridge_args())
        bridge.wait_ready(timeout=300)
        ready_s = time.monotonic() - started
        time.sleep(args.settle)  # the window in which needless publishes would show
        metrics = bridge.metrics()
    return {
        "devices": n,
        "ready_s": ready_s,
        "desired_published": metrics.value("devicefabric_desired_published_total"),
        "reread": metrics.value("devicefabric_replay_reread_total"),
        "missing": metrics.value("devicefabric_replay_missing_total"),
    }


DEFAULTS: Final[Defaults] = {"sizes": ("5000,10000", "2000")}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", help="comma-separated fleet sizes")
    p.add_argument("--queue", type=int, default=1000, help="mosquitto max_queued_messages")
    p.add_argument("--settle", type=float, default=5.0, help="s watched for publishes")


def run(args: argparse.Namespace, result: Result) -> Result:
    for m in result.over_sizes(args.sizes, lambda n: _one(n, args)):
        result.row(
            f"N={m['devices']:,}, queue {args.queue:,}: bridge restart -> ready / desired republished",
            f"{ms(m['ready_s'])} / {count(m['desired_published'])}",
            goal="0 republished",
            met=m["desired_published"] == 0,
            note=f"{count(m['reread'])} documents re-read, {count(m['missing'])} missing "
            "(the status of devices no agent ever ran on)",
        )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
