"""The agent's latency and footprint: desired -> report Running, idle RSS/CPU, bytes per heartbeat.

Setup: a real mosquitto from our generated config on a free loopback port, one agent as a user
runs it (`python -m devicefabric agent run --heartbeat 15`), and a paho client as the `bridge`
user that publishes `desired` (retained, QoS 1) and receives the device's reports.

1. Latency, `--changes` times (default 100), for three socket set-ups (see `VARIANTS`): publish a desired document in which the spec of one
   process changed (a new generation and argv), and time until the report shows that generation
   `Running` (clock: publish call -> report received in the paho callback). Each change is a
   real restart: the old child gets SIGTERM and exits, the new one is spawned.
2. Idle footprint over `--idle` seconds (default 300) with one running process: the agent's RSS
   (VmRSS, sampled) and CPU time (utime+stime from /proc) over wall time.
3. Bytes per heartbeat: the MQTT PUBLISH size computed from the real topic and payload, and the
   TCP payload bytes the agent's socket sent during the idle window (`ss -tinp`: bytes_sent,
   data segments), which also include the keepalive PINGREQs.

Usage: `python bench/agent_latency.py [--changes N] [--idle SECONDS] [--json FILE]`. Prints a
table and writes JSON (default `.bench/agent_latency.json`). Never part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devicefabric.broker.mosquitto import generate
from devicefabric.config.credentials import new_secret, password_for
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import Topics
from devicefabric.config.wire import DesiredProcess, Heartbeat, encode, make_desired

DEVICE = "bench-dev"
HOST = "127.0.0.1"
MOSQUITTO = Path("/usr/sbin/mosquitto")
TOPICS = Topics()
HEARTBEAT_S = 15
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError("broker did not open its port")


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Bridge:
    """The `bridge` user: publishes desired documents, collects the device's reports."""

    def __init__(self, port: int, secret: bytes, *, nodelay: bool) -> None:
        self.cond = threading.Condition()
        self.reports: list[tuple[float, dict[str, Any]]] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge_bench{os.getpid()}")
        client.username_pw_set("bridge", password_for(secret, "bridge"))
        client.on_message = self._on_message
        client.connect(HOST, port)
        sock = client.socket()
        if nodelay and isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        client.subscribe(TOPICS.report(DEVICE), qos=1)
        self.client = client

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        with self.cond:
            self.reports.append((now, json.loads(msg.payload)))
            self.cond.notify_all()

    def publish(self, payload: bytes) -> float:
        start = time.perf_counter()
        self.client.publish(TOPICS.desired(DEVICE), payload, qos=1, retain=True)
        return start

    def wait(self, predicate: Any, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, doc in self.reports:
                    if predicate(doc):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching report")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _document(generation: int) -> bytes:
    procs = [
        DesiredProcess(
            namespace="bench",
            name="worker",
            uid="uid-worker",
            generation=generation,
            spec=DeviceProcessSpec(
                device_name=DEVICE, command=["/bin/sleep", str(100_000 + generation)]
            ),
        ),
        DesiredProcess(
            namespace="bench",
            name="steady",
            uid="uid-steady",
            generation=1,
            spec=DeviceProcessSpec(device_name=DEVICE, command=["/bin/sleep", "100000"]),
        ),
    ]
    return encode(make_desired(procs))


def _running(doc: dict[str, Any], generation: int) -> bool:
    worker = doc.get("processes", {}).get("bench/worker", {})
    return bool(worker.get("generation") == generation and worker.get("phase") == "Running")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _tcp_counters(pid: int, port: int) -> dict[str, int]:
    out = subprocess.run(
        ["ss", "-tinpH", "dst", f"{HOST}:{port}"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"pid={pid}," in line and i + 1 < len(lines):
            info = lines[i + 1]
            return {
                k: int(v)
                for k, v in re.findall(r"\b(bytes_sent|data_segs_out|segs_out):(\d+)", info)
            }
    return {}


@dataclass(frozen=True)
class Variant:
    """Which sockets run with TCP_NODELAY (the agent's always does)."""

    name: str
    bridge_nodelay: bool
    broker_nodelay: bool


VARIANTS = (
    Variant(
        "as shipped (paho bridge, generated mosquitto.conf)",
        bridge_nodelay=False,
        broker_nodelay=False,
    ),
    Variant("bridge socket TCP_NODELAY", bridge_nodelay=True, broker_nodelay=False),
    Variant("+ mosquitto set_tcp_nodelay true", bridge_nodelay=True, broker_nodelay=True),
)


def _agent_argv(port: int, password: Path, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devicefabric",
        "--log-level",
        "WARNING",
        "agent",
        "run",
        "--device",
        DEVICE,
        "--broker",
        f"mqtt://{HOST}:{port}",
        "--password-file",
        str(password),
        "--state-dir",
        str(state),
        "--heartbeat",
        str(HEARTBEAT_S),
    ]


def run_variant(variant: Variant, changes: int, idle: float, workdir: Path) -> dict[str, Any]:
    """Latency over `changes` desired changes, then (if `idle`) the idle footprint."""
    secret = new_secret().encode()
    port = _free_port()
    written = generate(
        workdir / "mosquitto",
        [DEVICE],
        secret,
        HostPort(HOST, port),
        user=pwd.getpwuid(os.geteuid()).pw_name,
    )
    if variant.broker_nodelay:
        with written.conf.open("a", encoding="utf-8") as conf:
            conf.write("set_tcp_nodelay true\n")
    password = workdir / "device.password"
    password.write_text(password_for(secret, DEVICE) + "\n")
    result: dict[str, Any] = {"variant": variant.name}
    with _process([str(MOSQUITTO), "-c", str(written.conf)], workdir / "mosquitto.log") as broker:
        _wait_port(port, broker)
        bridge = Bridge(port, secret, nodelay=variant.bridge_nodelay)
        argv = _agent_argv(port, password, workdir / "state")
        try:
            with _process(argv, workdir / "agent.log") as agent:
                bridge.publish(_document(0))
                bridge.wait(lambda d: _running(d, 0), timeout=30)
                latencies = []
                for generation in range(1, changes + 1):
                    start = bridge.publish(_document(generation))
                    at = bridge.wait(lambda d, g=generation: _running(d, g))
                    latencies.append((at - start) * 1000)
                if idle > 0:
                    result["idle"] = _idle(agent.pid, port, idle)
        finally:
            bridge.close()
    latencies.sort()
    result["latency_ms"] = {
        "changes": changes,
        "median": round(statistics.median(latencies), 2),
        "p99": round(latencies[max(0, round(0.99 * len(latencies)) - 1)], 2),
        "min": round(latencies[0], 2),
        "max": round(latencies[-1], 2),
    }
    return result


def heartbeat_size() -> dict[str, Any]:
    beat = encode(Heartbeat(session="0123abcd-1", seq=12))
    topic = TOPICS.heartbeat(DEVICE)
    mqtt_bytes = 1 + 1 + 2 + len(topic) + len(beat)  # type+flags, remaining length, topic length
    return {
        "topic": topic,
        "payload": beat.decode(),
        "mqtt_publish_bytes": mqtt_bytes,
        "with_ipv4_tcp_headers_bytes": mqtt_bytes + 20 + 32,  # IPv4 + TCP with timestamps
    }


def _idle(pid: int, port: int, seconds: float) -> dict[str, Any]:
    tcp0 = _tcp_counters(pid, port)
    cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
    rss: list[int] = []
    while time.monotonic() - wall0 < seconds:
        rss.append(_rss_kib(pid))
        time.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - wall0))))
    cpu1, wall1 = _cpu_seconds(pid), time.monotonic()
    tcp1 = _tcp_counters(pid, port)
    rss.append(_rss_kib(pid))
    wall = wall1 - wall0
    sent = tcp1.get("bytes_sent", 0) - tcp0.get("bytes_sent", 0)
    segments = tcp1.get("data_segs_out", 0) - tcp0.get("data_segs_out", 0)
    beats = wall / HEARTBEAT_S
    return {
        "seconds": round(wall, 1),
        "rss_kib_max": max(rss),
        "rss_kib_last": rss[-1],
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 4),
        "tcp_payload_bytes_sent": sent,
        "tcp_data_segments_sent": segments,
        "tcp_payload_bytes_per_heartbeat_interval": round(sent / beats, 1) if beats else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--idle", type=float, default=300.0, help="idle window in seconds")
    parser.add_argument("--json", type=Path, default=Path(".bench/agent_latency.json"))
    args = parser.parse_args()
    runs = []
    for i, variant in enumerate(VARIANTS):
        with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
            idle = args.idle if i == len(VARIANTS) - 1 else 0.0
            runs.append(run_variant(variant, args.changes, idle, Path(tmp)))
    result: dict[str, Any] = {
        "runs": runs,
        "heartbeat": heartbeat_size(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(f"desired publish -> report Running over {args.changes} changes (ms)")
    print(f"  {'variant':<52} {'median':>8} {'p99':>8} {'max':>8}")
    for run in runs:
        lat = run["latency_ms"]
        print(f"  {run['variant']:<52} {lat['median']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f}")
    idle, beat = runs[-1]["idle"], result["heartbeat"]
    print(f"idle footprint over {idle['seconds']:.0f} s, heartbeat {HEARTBEAT_S} s, one child")
    print(
        f"  {'agent RSS max / last (KiB)':<52} {idle['rss_kib_max']:>8} {idle['rss_kib_last']:>8}"
    )
    print(
        f"  {'agent CPU seconds / percent':<52} {idle['cpu_seconds']:>8} {idle['cpu_percent']:>8}"
    )
    print("bytes per heartbeat")
    print(f"  {'MQTT PUBLISH (topic + payload + header)':<52} {beat['mqtt_publish_bytes']:>8}")
    print(f"  {'with IPv4 + TCP headers':<52} {beat['with_ipv4_tcp_headers_bytes']:>8}")
    per = idle["tcp_payload_bytes_per_heartbeat_interval"]
    print(f"  {'measured TCP payload sent per 15 s (incl. pings)':<52} {per!s:>8}")
    print(
        f"  {'measured data segments sent in the window':<52} {idle['tcp_data_segments_sent']:>8}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
