"""A fleet of simulated devices in one process: one real MQTT connection per device, raw asyncio.

`python -m bench.simfleet --port P --secret-file F --devices N [--prefix sc] [--heartbeat 15]`
connects nothing until told. Commands on stdin, one per line; each answers one line on stdout:

- `connect` -> `connected N SECONDS`: every device not connected opens its own connection as
  itself (client id = user = the device name, its derived password) with the agent's retained
  QoS 1 will (`offline`/`lost` of a new session), publishes its retained birth and report (one
  process `<namespace>/<device>` Running at generation 1), subscribes to its `desired`, and then
  sends a QoS 0 heartbeat every `--heartbeat` s (phases spread evenly over the interval);
- `drop` -> `dropped N`: every connection closed without DISCONNECT (the broker fires every will:
  a site losing power);
- `beat S` -> `beating N S`: every connected device heartbeats each S s from now on (phases
  spread over S): `beat 1` makes N devices send N heartbeats per second;
- `sent` -> `sent TOTAL`: heartbeats written so far by all devices;
- `count` -> `count CONNECTED`; `quit` closes everything and exits.

What a device receives (its retained desired, the bridge's status) is read and acknowledged
(QoS 1) and otherwise discarded. Connections are opened `--parallel` at a time. Nothing here
imports paho: ~10,000 connections fit in one loop with little memory. `FleetProc` starts this
module as a child of a `Fabric` and drives it line by line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from bench.fabric import TOPICS, Broker, Fabric
from devicefabric.config.credentials import device_password
from tests.support.packets import connect_packet, publish_packet, subscribe_packet

NAMESPACE: Final = "bench"


def _j(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return first, await reader.readexactly(length)


class Device:
    """One device's connection; see the module doc."""

    def __init__(self, name: str, secret: bytes, heartbeat: float) -> None:
        self.name = name
        self.password = device_password(secret, name)
        self.heartbeat = heartbeat
        self.session = ""
        self.seq = 0
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.beats: asyncio.Task[None] | None = None
        self.sent = 0  # heartbeats written

    async def connect(self, host: str, port: int, phase: float) -> None:
        self.session = f"{secrets.token_hex(4)}.1"
        will = _j({"state": "offline", "session": self.session, "reason": "lost"})
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            connect_packet(
                self.name,
                self.name,
                self.password,
                keepalive=60,
                will=(TOPICS.status(self.name), will),
                will_retain=True,
            )
        )
        kind, body = await _read_packet(reader)
        if kind != 0x20 or body[-1:] != b"\x00":
            writer.close()
            raise RuntimeError(f"{self.name}: CONNACK {body!r}")
        self.writer = writer
        birth = {"state": "online", "session": self.session, "heartbeat_s": self.heartbeat}
        self.seq += 1
        process = {"generation": 1, "phase": "Running", "pid": 4242, "restarts": 0}
        report = {
            "session": self.session,
            "seq": self.seq,
            "revision": "sim",
            "processes": {f"{NAMESPACE}/{self.name}": process},
        }
        writer.write(
            publish_packet(
                TOPICS.status(self.name), _j({**birth, "agent": "sim"}), 1, 1, retain=True
            )
            + publish_packet(TOPICS.report(self.name), _j(report), 1, 2, retain=True)
            + subscribe_packet(TOPICS.desired(self.name), 1, 3)
        )
        self.task = asyncio.create_task(self._serve(reader, phase), name=f"device-{self.name}")

    def pace(self, interval: float, phase: float) -> None:
        """Heartbeat every `interval` s from now on, the first after `phase` s."""
        self.heartbeat = interval
        if self.beats is not None and self.writer is not None:
            self.beats.cancel()
            self.beats = asyncio.create_task(self._beat(phase), name=f"beats-{self.name}")

    async def _serve(self, reader: asyncio.StreamReader, phase: float) -> None:
        beats = self.beats = asyncio.create_task(self._beat(phase))
        try:
            while True:
                kind, body = await _read_packet(reader)
                if kind & 0xF0 == 0x30 and kind & 0x06:  # QoS 1 PUBLISH: acknowledge it
                    topic_len = int.from_bytes(body[:2], "big")
                    packet_id = body[2 + topic_len : 4 + topic_len]
                    if self.writer is not None:
                        self.writer.write(b"\x40\x02" + packet_id)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            beats.cancel()
            if self.beats is not None:
                self.beats.cancel()

    async def _beat(self, phase: float) -> None:
        await asyncio.sleep(phase)
        while self.writer is not None:
            self.seq += 1
            payload = _j({"session": self.session, "seq": self.seq})
            self.writer.write(publish_packet(TOPICS.heartbeat(self.name), payload))
            self.sent += 1
            await asyncio.sleep(self.heartbeat)

    def drop(self) -> None:
        """Close without DISCONNECT: the broker publishes the will."""
        writer, self.writer = self.writer, None
        if writer is not None:
            transport = writer.transport
            transport.abort()

    @property
    def connected(self) -> bool:
        return self.writer is not None


async def _connect_all(
    devices: list[Device], host: str, port: int, parallel: int, heartbeat: int
) -> int:
    gate = asyncio.Semaphore(parallel)
    todo = [d for d in devices if not d.connected]
    spread = heartbeat / max(1, len(todo))

    async def one(i: int, device: Device) -> None:
        async with gate:
            await device.connect(host, port, i * spread)

    await asyncio.gather(*(one(i, d) for i, d in enumerate(todo)))
    return len(todo)


async def main(args: argparse.Namespace, secret: bytes) -> None:  # noqa: C901 - one branch per command
    names = [f"{args.prefix}-{i:05d}" for i in range(args.devices)]
    devices = [Device(n, secret, args.heartbeat) for n in names]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("fleet ready", flush=True)
    while line := (await stdin.readline()).decode().strip():
        started = time.monotonic()
        if line == "connect":
            n = await _connect_all(devices, args.host, args.port, args.parallel, args.heartbeat)
            print(f"connected {n} {time.monotonic() - started:.3f}", flush=True)
        elif line == "drop":
            live = [d for d in devices if d.connected]
            for device in live:
                device.drop()
            print(f"dropped {len(live)}", flush=True)
        elif line.startswith("beat "):  # "beat 1": every device heartbeats each second
            interval = float(line.split()[1])
            live = [d for d in devices if d.connected]
            for i, device in enumerate(live):
                device.pace(interval, i * interval / max(1, len(live)))
            print(f"beating {len(live)} {interval}", flush=True)
        elif line == "sent":
            print(f"sent {sum(d.sent for d in devices)}", flush=True)
        elif line == "count":
            print(f"count {sum(d.connected for d in devices)}", flush=True)
        elif line == "quit":
            break
    for device in devices:
        device.drop()
        if device.task is not None:
            device.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await device.task


class FleetProc:
    """`python -m bench.simfleet`, driven line by line over its stdin; stopped with the fabric."""

    def __init__(self, fab: Fabric, broker: Broker, n: int, prefix: str = "sc") -> None:
        secret = fab.workdir / "fleet.secret"
        secret.write_bytes(fab.secret + b"\n")
        argv = [sys.executable, "-m", "bench.simfleet", "--port", str(broker.port)]
        argv += ["--secret-file", str(secret), "--devices", str(n), "--prefix", prefix]
        self.log_path = fab.workdir / "simfleet.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        fab.callback(self.stop)
        self._expect("fleet ready")

    def _expect(self, prefix: str) -> str:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().strip()
        if not line.startswith(prefix):
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"simfleet said {line!r}, expected {prefix!r}:\n{tail}")
        return line

    def command(self, word: str, answer: str) -> str:
        assert self.popen.stdin is not None
        self.popen.stdin.write(word + "\n")
        self.popen.stdin.flush()
        return self._expect(answer)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.simfleet", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--prefix", default="sc")
    parser.add_argument("--heartbeat", type=int, default=15)
    parser.add_argument("--parallel", type=int, default=200)
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()
    asyncio.run(main(ARGS, Path(ARGS.secret_file).read_bytes().strip()))
