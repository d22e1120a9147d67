"""Messages/s through a broker with the fabric's auth + ACL on: mosquitto (generated config) vs embedded.

One publisher (device `bench-dev` publishing its own `report`) and one subscriber (the `bridge`
user on `devices/+/report`), both paho with their network loops in threads, QoS 0 and QoS 1. The
publisher keeps at most `--window` messages published but not yet received (end-to-end flow
control, so no broker queue overflows). The clock runs from the first publish to the last
message received; the rate is messages / seconds.
Each broker runs as a separate process on a free loopback port:

- mosquitto: `/usr/sbin/mosquitto -c` the files `devicefabric broker mosquitto-config` writes;
- embedded: `python -m devicefabric broker run` (skipped with a note when it does not start).

Usage: `python bench/broker_mosquitto.py [--messages N] [--payload BYTES] [--json FILE]
[--brokers mosquitto,embedded]`. Prints a table and writes JSON (default
`.bench/broker_mosquitto.json`). Never part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import signal
import socket
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

from devicefabric.broker.mosquitto import generate
from devicefabric.config.credentials import new_secret, password_for
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import DeviceTopic, Topics

DEVICE = "bench-dev"
HOST = "127.0.0.1"
MOSQUITTO = Path("/usr/sbin/mosquitto")
TOPICS = Topics()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError("broker did not open its port")


@contextlib.contextmanager
def _broker(kind: str, workdir: Path, secret: bytes) -> Iterator[int]:
    port = _free_port()
    if kind == "mosquitto":
        written = generate(
            workdir / "mosquitto",
            [DEVICE],
            secret,
            HostPort(HOST, port),
            user=pwd.getpwuid(os.geteuid()).pw_name,
        )
        argv = [str(MOSQUITTO), "-c", str(written.conf)]
        timeout = 5.0
    else:
        secret_file = workdir / "secret"
        secret_file.write_bytes(secret)
        argv = [sys.executable, "-m", "devicefabric", "broker", "run"]
        argv += ["--mqtt", f"{HOST}:{port}", "--secret-file", str(secret_file)]
        timeout = 20.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}
    log = (workdir / f"{kind}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        _wait_port(port, proc, timeout)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _client(port: int, user: str, client_id: str, secret: bytes) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(user, password_for(secret, user))
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: connected.set() if not rc.is_failure else None
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    if not connected.wait(5):
        client.loop_stop()
        raise RuntimeError(f"{user} could not connect")
    return client


def _run_once(
    port: int, secret: bytes, qos: int, messages: int, payload: bytes, *, window: int
) -> dict[str, Any]:
    received = 0
    done = threading.Event()
    lock = threading.Lock()
    in_flight = threading.Semaphore(window)

    def on_message(_c: paho.Client, _u: Any, _m: paho.MQTTMessage) -> None:
        nonlocal received
        with lock:
            received += 1
            if received >= messages:
                done.set()
        in_flight.release()

    subscribed = threading.Event()
    sub = _client(port, "bridge", f"bridge_bench-{qos}", secret)
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.subscribe(TOPICS.all_devices(DeviceTopic.REPORT), qos=qos)
    if not subscribed.wait(5):
        raise RuntimeError("no SUBACK")
    pub = _client(port, DEVICE, DEVICE, secret)
    topic = TOPICS.report(DEVICE)
    start = time.perf_counter()
    infos = []
    for _ in range(messages):
        if not in_flight.acquire(timeout=10):
            break  # messages were dropped on the way: stop and report what arrived
        infos.append(pub.publish(topic, payload, qos=qos))
    lost = not done.wait(10)
    elapsed = time.perf_counter() - start
    if qos:
        for info in infos:
            info.wait_for_publish(5)
    for client in (pub, sub):
        client.disconnect()
        client.loop_stop()
    return {
        "qos": qos,
        "messages": messages,
        "received": received,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(received / elapsed) if elapsed else 0,
        "complete": not lost,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--payload", type=int, default=200, help="payload bytes")
    parser.add_argument(
        "--window",
        type=int,
        default=500,
        help="most messages published but not yet received (mosquitto queues at most 1,000 "
        "per subscriber by default and drops the rest; an unbounded publisher measures drops)",
    )
    parser.add_argument("--brokers", default="mosquitto,embedded")
    parser.add_argument("--json", type=Path, default=Path(".bench/broker_mosquitto.json"))
    args = parser.parse_args()
    secret = new_secret().encode()
    payload = b"x" * args.payload
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        for kind in args.brokers.split(","):
            workdir = Path(tmp) / kind
            workdir.mkdir()
            try:
                with _broker(kind, workdir, secret) as port:
                    for qos in (0, 1):
                        row = _run_once(
                            port, secret, qos, args.messages, payload, window=args.window
                        )
                        results.append({"broker": kind, **row})
            except RuntimeError as exc:
                print(f"{kind}: skipped ({exc})", file=sys.stderr)
    print(f"{'broker':<10} {'qos':>3} {'messages':>9} {'received':>9} {'seconds':>8} {'msg/s':>9}")
    for row in results:
        print(
            f"{row['broker']:<10} {row['qos']:>3} {row['messages']:>9} {row['received']:>9} "
            f"{row['seconds']:>8.3f} {row['msgs_per_s']:>9}"
        )
    by = {(r["broker"], r["qos"]): r["msgs_per_s"] for r in results}
    for qos in (0, 1):
        if by.get(("mosquitto", qos)) and by.get(("embedded", qos)):
            ratio = by[("mosquitto", qos)] / by[("embedded", qos)]
            print(f"QoS{qos}: mosquitto / embedded = {ratio:.1f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "bench": "broker_messages_per_second",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "payload_bytes": args.payload,
        "results": results,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
