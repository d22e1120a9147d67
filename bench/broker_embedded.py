"""The embedded broker under load: messages/s with auth + ACL, and 1,000 device connections.

The broker is the shipped command (`python -m devicefabric broker run --mqtt 127.0.0.1:0`) in its
own process, so its CPU time and RSS are read from /proc without the clients in the way.

1. Messages/s: one publisher (device `bench-dev` on its own `report`) and one subscriber (the
   `bridge` user on `devices/+/report`), paho clients with network loops in threads, QoS 0 and 1,
   `--payload` bytes each. At most `--window` messages are in flight end to end (published, not
   yet received), so no queue grows without bound. The clock runs from the first publish to the
   last message received.
2. Connections: `--connections` devices connect (TCP + CONNECT + CONNACK, each with its own
   HMAC-derived password), `--parallel` at a time, from asyncio sockets; all stay connected
   while the broker's RSS is read. Reported: total time, connects/s, latency percentiles, RSS
   idle before and with every connection open, and the difference per connection.

Usage: `python bench/broker_embedded.py [--messages N] [--payload B] [--window W]
[--connections N] [--parallel P] [--json FILE]`. Prints a table and writes JSON (default
`.bench/broker_embedded.json`). Never part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devicefabric.config.credentials import new_secret, password_for
from devicefabric.config.topics import DeviceTopic, Topics

HOST = "127.0.0.1"
TOPICS = Topics()
DEVICE = "bench-dev"


class Broker:
    def __init__(self, process: subprocess.Popen[str], port: int, secret: bytes) -> None:
        self.process = process
        self.port = port
        self.secret = secret

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def embedded_broker() -> Iterator[Broker]:
    secret = new_secret().encode()
    with tempfile.TemporaryDirectory() as tmp:
        secret_file = Path(tmp) / "secret"
        secret_file.write_bytes(secret)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "devicefabric", "--log-level", "WARNING", "broker", "run"),
                *("--mqtt", f"{HOST}:0", "--secret-file", str(secret_file)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert process.stdout is not None
            ready = process.stdout.readline().strip()
            if not ready.startswith("broker listening on"):
                raise RuntimeError(f"broker did not start: {ready!r}")
            yield Broker(process, int(ready.rsplit(":", 1)[1]), secret)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _client(broker: Broker, user: str, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(user, password_for(broker.secret, user))
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(HOST, broker.port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"{user} could not connect")
    return client


def throughput(
    broker: Broker, qos: int, messages: int, payload: int, window: int
) -> dict[str, Any]:
    received = 0
    cond = threading.Condition()
    subscribed = threading.Event()

    def on_message(*_: Any) -> None:
        nonlocal received
        with cond:
            received += 1
            cond.notify_all()

    subscriber = _client(broker, "bridge", f"bridge_bench_{qos}")
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.subscribe(TOPICS.all_devices(DeviceTopic.REPORT), qos=qos)
    subscribed.wait(10)
    publisher = _client(broker, DEVICE, DEVICE)
    body = b"x" * payload
    topic = TOPICS.report(DEVICE)
    cpu0, start = broker.cpu_seconds(), time.perf_counter()
    sent = 0

    def room() -> bool:
        return sent - received < window

    while sent < messages:
        with cond:
            cond.wait_for(room, timeout=30)
        publisher.publish(topic, body, qos=qos)
        sent += 1
    with cond:
        done = cond.wait_for(lambda: received >= messages, timeout=120)
    elapsed = time.perf_counter() - start
    cpu = broker.cpu_seconds() - cpu0
    for client in (publisher, subscriber):
        client.disconnect()
        client.loop_stop()
    return {
        "qos": qos,
        "messages": messages,
        "received": received,
        "complete": bool(done),
        "seconds": round(elapsed, 3),
        "msg_per_s": round(received / elapsed),
        "broker_cpu_pct": round(100 * cpu / elapsed),
    }


def _connect_packet(name: str, password: str) -> bytes:
    def string(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("!H", len(raw)) + raw

    body = string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 600)
    body += string(name) + string(name) + string(password)
    length = bytearray()
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x10]) + bytes(length) + body


async def _connections(broker: Broker, count: int, parallel: int) -> dict[str, Any]:
    names = [f"dev-{i:05d}" for i in range(count)]
    packets = {name: _connect_packet(name, password_for(broker.secret, name)) for name in names}
    gate = asyncio.Semaphore(parallel)
    writers: list[asyncio.StreamWriter] = []
    latencies: list[float] = []

    async def one(name: str) -> None:
        async with gate:
            begin = time.perf_counter()
            reader, writer = await asyncio.open_connection(HOST, broker.port)
            writer.write(packets[name])
            connack = await reader.readexactly(4)
            latencies.append(time.perf_counter() - begin)
            if connack != b"\x20\x02\x00\x00":
                raise RuntimeError(f"{name}: CONNACK {connack!r}")
            writers.append(writer)

    rss_idle = broker.rss_kib()
    start = time.perf_counter()
    await asyncio.gather(*(one(name) for name in names))
    total = time.perf_counter() - start
    await asyncio.sleep(1.0)  # let the broker settle before reading RSS (a benchmark, not a test)
    rss_connected = broker.rss_kib()
    for writer in writers:
        writer.close()
    latencies.sort()
    return {
        "connections": count,
        "parallel": parallel,
        "seconds": round(total, 3),
        "connects_per_s": round(count / total),
        "latency_ms_p50": round(1000 * statistics.median(latencies), 2),
        "latency_ms_p99": round(1000 * latencies[int(0.99 * (count - 1))], 2),
        "latency_ms_max": round(1000 * latencies[-1], 2),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_connected_mib": round(rss_connected / 1024, 1),
        "kib_per_connection": round((rss_connected - rss_idle) / count, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--payload", type=int, default=220)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--json", type=Path, default=Path(".bench/broker_embedded.json"))
    args = parser.parse_args()
    with embedded_broker() as broker:
        rates = [
            throughput(broker, qos, args.messages, args.payload, args.window) for qos in (0, 1)
        ]
    with embedded_broker() as broker:
        conns = asyncio.run(_connections(broker, args.connections, args.parallel))
    print(f"embedded broker, auth + ACL on; {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"{'qos':>3} {'messages':>9} {'seconds':>8} {'msg/s':>7} {'broker cpu':>10}")
    for r in rates:
        print(
            f"{r['qos']:>3} {r['received']:>9} {r['seconds']:>8} {r['msg_per_s']:>7}"
            f" {r['broker_cpu_pct']:>9}%"
        )
    print(
        f"{conns['connections']} device connections ({conns['parallel']} in parallel): "
        f"{conns['seconds']} s, {conns['connects_per_s']}/s, latency p50 "
        f"{conns['latency_ms_p50']} ms, p99 {conns['latency_ms_p99']} ms; RSS "
        f"{conns['rss_idle_mib']} MiB idle -> {conns['rss_connected_mib']} MiB connected "
        f"({conns['kib_per_connection']} KiB/connection)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"throughput": rates, "connections": conns}, indent=2))


if __name__ == "__main__":
    main()
