"""Benchmark 8, clustered broker: heartbeats/s through a 3-node NATS cluster vs one mosquitto.

Same run, same clients, both brokers from our generators (`broker nats-config` with 3 nodes on
loopback, JetStream `stream_replicas` 3; `broker mosquitto-config`): `--devices` device
connections (spread round-robin over the cluster's nodes; all on the one mosquitto) each publish
`--beats` heartbeats (the agent's own encoding, QoS 0, not retained, as the agent sends them)
from one thread per device, and the `bridge` user, on the cluster's last node, receives
`devices/+/heartbeat` at QoS 0 as the bridge does. Measured: heartbeats received per second from
the first publish to the last delivery (or to `--quiet` s without one), and the share lost.

Heartbeats at QoS 0 are plain NATS messages between nodes (no JetStream), so this is the
cluster's routing cost; retained documents and QoS 1 go through JetStream and are slower (see
docs/scale.md). The clients are Python (paho), so both rates are bounded by them as much as by
the brokers: the ratio is what this bench shows.

Usage: `python -m bench.cluster [--quick] [--devices N] [--beats N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from bench.harness import Defaults, Result, count, main, per_s
from devicefabric.config import lean
from devicefabric.config.credentials import new_secret
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.topics import DeviceTopic, Topics
from tests.support.brokers import BrokerProcess, prepare_mosquitto, running
from tests.support.mqtt import Client, connect
from tests.support.nats import nats_cluster

T: Final = Topics()


def _names(devices: int) -> list[str]:
    return [f"hb-{i:04d}" for i in range(devices)]


def _blast(client: Client, device: str, beats: int, start: threading.Event) -> None:
    topic = T.heartbeat(device)
    start.wait()
    for seq in range(1, beats + 1):
        client.paho.publish(topic, lean.encode_heartbeat(f"{device}-1", seq), qos=0)


def _measure(
    nodes: Sequence[BrokerProcess], receiver_node: BrokerProcess, args: argparse.Namespace
) -> dict[str, Any]:
    names = _names(args.devices)
    with contextlib.ExitStack() as stack:
        bridge = stack.enter_context(connect(receiver_node, BRIDGE_USER))
        assert not bridge.subscribe(T.all_devices(DeviceTopic.HEARTBEAT), qos=0).is_failure
        devices = [
            stack.enter_context(connect(nodes[i % len(nodes)], name))
            for i, name in enumerate(names)
        ]
        start = threading.Event()
        threads = [
            threading.Thread(target=_blast, args=(c, n, args.beats, start), daemon=True)
            for c, n in zip(devices, names, strict=True)
        ]
        for thread in threads:
            thread.start()
        sent = args.devices * args.beats
        began = time.monotonic()
        start.set()
        last, got = began, 0
        while got < sent:
            time.sleep(0.05)
            now_got = len(bridge.inbox.messages())
            if now_got != got:
                got, last = now_got, time.monotonic()
            elif time.monotonic() - last > args.quiet:
                break
        for thread in threads:
            thread.join(10.0)
        elapsed = max(last - began, 1e-9)
    return {"sent": sent, "received": got, "seconds": elapsed, "per_s": got / elapsed}


@contextlib.contextmanager
def _brokers(base: Path, secret: bytes, names: list[str]) -> Iterator[dict[str, Any]]:
    mosquitto = prepare_mosquitto(base / "mosquitto", secret, names)
    with running(mosquitto), nats_cluster(base / "nats", secret, names) as cluster:
        yield {"mosquitto": ((mosquitto,), mosquitto), "nats": (cluster.nodes, cluster.nodes[-1])}


DEFAULTS: Final[Defaults] = {"devices": (30, 9), "beats": (2000, 500), "repeat": (3, 1)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, help="device connections")
    p.add_argument("--beats", type=int, help="heartbeats per device")
    p.add_argument("--repeat", type=int, help="runs per broker")
    p.add_argument("--quiet", type=float, default=2.0, help="s without a delivery that ends a run")


def run(args: argparse.Namespace, result: Result) -> Result:
    secret = new_secret().encode()
    found: dict[str, list[dict[str, Any]]] = {"mosquitto": [], "nats": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
        _brokers(Path(tmp), secret, _names(args.devices)) as brokers,
    ):
        for attempt in range(args.repeat):
            for kind, (nodes, receiver) in brokers.items():
                measured = _measure(nodes, receiver, args)
                found[kind].append(measured)
                print(
                    f"  {kind} run {attempt + 1}: {measured['received']:,}/{measured['sent']:,}"
                    f" in {measured['seconds']:.2f}s = {count(measured['per_s'])}/s",
                    flush=True,
                )
    result.metrics["runs"] = found
    rates = {k: sorted(r["per_s"] for r in runs)[len(runs) // 2] for k, runs in found.items()}
    lost = {
        k: 1 - sum(r["received"] for r in v) / sum(r["sent"] for r in v) for k, v in found.items()
    }
    for kind, runs in found.items():
        result.series(f"{kind}_heartbeats_per_s", [r["per_s"] for r in runs])
    result.versus(
        "heartbeats/s, 3-node NATS cluster vs 1 mosquitto",
        rates["nats"],
        rates["mosquitto"],
        per_s,
        note=f"{args.devices} devices over 3 nodes, QoS 0; lost {lost['nats']:.1%} "
        f"(mosquitto {lost['mosquitto']:.1%}); paho clients bound both",
    )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
