"""The benchmarks' own MQTT clients: a timestamping watcher and a raw load generator.

- `Watcher`: a bare paho subscriber (the `observer` by default) with paho's network loop in a
  thread and TCP_NODELAY on its socket; every message lands in the test kit's `Inbox`, stamped
  with `time.monotonic()` in the network thread on arrival, so a latency is arrival minus the
  moment the benchmark acted (`inbox.wait_for(..., since=t0).at - t0`). paho's own loop, not the
  kit's `Client`: the latency floors were measured through it.
- `RawPublisher`: one MQTT connection that writes pre-encoded packets (`tests.support.packets`)
  with no client library in the way, as the `loadgen` user by default (one connection speaking
  for a whole fleet); what it receives is read and discarded.
- `tcp_counters(pid, port)`: the kernel's TCP counters (`ss -tinp`) of one connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.fabric import HOST, LOADGEN, Broker
from devicefabric.config.credentials import password_for
from devicefabric.config.names import OBSERVER_USER
from tests.support.inbox import Inbox, Message
from tests.support.packets import CONNACK_ACCEPTED, connect_packet

__all__ = ["Message", "RawPublisher", "Watcher", "tcp_counters", "watching"]

SUBSCRIBE_TIMEOUT: Final = 10.0
WAIT_TIMEOUT: Final = 10.0  # the default wait for a message: a restart on a loaded machine


class Watcher:
    """A bare paho subscriber recording every message it receives in `inbox`."""

    def __init__(
        self,
        broker: Broker,
        secret: bytes,
        filters: Iterable[str],
        *,
        user: str = OBSERVER_USER,
        qos: int = 1,
    ) -> None:
        self.inbox = Inbox(patience=WAIT_TIMEOUT)
        self._subscribed = threading.Event()
        self.filters = list(filters)
        client_id = f"{user}_bench-{os.getpid()}-{id(self):x}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.username_pw_set(user, password_for(secret, user))
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()
        client.on_connect = lambda c, *_a: c.subscribe([(f, qos) for f in self.filters])
        client.connect(HOST, broker.port, keepalive=60)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT):
            self.close()
            raise RuntimeError(f"{user} could not subscribe to {self.filters}")

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.inbox.add(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def watching(
    broker: Broker, secret: bytes, filters: Iterable[str], **kwargs: Any
) -> Iterator[Watcher]:
    watcher = Watcher(broker, secret, filters, **kwargs)
    try:
        yield watcher
    finally:
        watcher.close()


class RawPublisher:
    """One MQTT connection that writes pre-encoded packets; what it receives is discarded."""

    def __init__(self, broker: Broker, secret: bytes, user: str = LOADGEN) -> None:
        self.sock = socket.create_connection((HOST, broker.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = f"{user}_bench-{os.getpid()}" if user == LOADGEN else user
        password = password_for(secret, user)
        self.sock.sendall(connect_packet(client_id, user, password, keepalive=600))
        connack = self.sock.recv(4)
        if connack != CONNACK_ACCEPTED:
            raise RuntimeError(f"{user}: CONNACK {connack!r}")
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._drain, name="raw-drain", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


_SS_COUNTER: Final = re.compile(r"\b(bytes_sent|bytes_received|data_segs_out|segs_out):(\d+)")


def tcp_counters(pid: int, port: int) -> dict[str, int]:
    """Kernel TCP counters (`ss -tinp`) of `pid`'s connection to `port` on loopback."""
    out = subprocess.run(
        ["ss", "-tinpH", "dst", f"{HOST}:{port}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"pid={pid}," in line and i + 1 < len(lines):
            return {k: int(v) for k, v in _SS_COUNTER.findall(lines[i + 1])}
    return {}
