"""Simulated devices for bridge tests and benchmarks: many paho clients on one asyncio loop.

Each `SimDevice` is a real MQTT connection as its device (client id and username = the device
name, its derived password) with the agent's retained will, so the broker fires a real will when
`drop()` closes the socket without a DISCONNECT. Every client's socket is registered with the
running event loop (paho's `loop_read`/`loop_write`/`loop_misc`), so hundreds of devices cost no
threads and share the loop with the bridge under test.

`Fleet` makes and tracks them: `connect(names)` (births; `desired=True` subscribes them to their
desired documents), `beat()` (one heartbeat from every live device), `beating()` (a heartbeat task
for a block), `drop`/`shutdown`/`reconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from devicefabric.config.credentials import device_password
from devicefabric.config.topics import Topics
from tests.support.waiting import stop_task


def _j(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class SimDevice:
    """One device connection; see the module doc."""

    def __init__(
        self, name: str, *, host: str, port: int, secret: bytes, topics: Topics, heartbeat_s: int
    ) -> None:
        self.name = name
        self.topics = topics
        self.heartbeat_s = heartbeat_s
        self.session = f"{secrets.token_hex(4)}.1"
        self.seq = 0
        self.messages: list[tuple[str, bytes, bool]] = []
        self._loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[int] = self._loop.create_future()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._fd: int | None = None
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=name,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(name, device_password(secret, name))
        will = _j({"state": "offline", "session": self.session, "reason": "lost"})
        client.will_set(topics.status(name), will, qos=1, retain=True)
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_want_write
        client.on_socket_unregister_write = self._on_no_write
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        self._host, self._port = host, port

    @property
    def connected(self) -> bool:
        return self._fd is not None

    # -- acting ----------------------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        self.client.connect(self._host, self._port, keepalive=60)
        async with asyncio.timeout(timeout):
            code = await self._connack
        if code != 0:
            raise AssertionError(f"{self.name}: CONNACK {code}")

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.name}: publish to {topic} failed: {info.rc}")
        if qos == 0:
            return
        if info.is_published():
            return
        future = self._acks.setdefault(info.mid, self._loop.create_future())
        async with asyncio.timeout(10):
            await future

    async def birth(self) -> None:
        doc = {"state": "online", "session": self.session, "heartbeat_s": self.heartbeat_s}
        await self.publish(self.topics.status(self.name), _j({**doc, "agent": "sim"}), retain=True)

    def heartbeat(self) -> None:
        self.seq += 1
        payload = _j({"session": self.session, "seq": self.seq})
        self.client.publish(self.topics.heartbeat(self.name), payload, qos=0)

    async def report(self, processes: dict[str, dict[str, Any]], revision: str = "r0") -> None:
        self.seq += 1
        doc = {"session": self.session, "seq": self.seq, "revision": revision}
        payload = _j({**doc, "processes": processes})
        await self.publish(self.topics.report(self.name), payload, retain=True)

    async def subscribe_desired(self) -> None:
        self.client.subscribe(self.topics.desired(self.name), qos=1)

    def drop(self) -> None:
        """Close the socket without a DISCONNECT: the broker fires the will (kill -9)."""
        sock = self.client.socket()
        self._unregister()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    async def shutdown(self) -> None:
        """The agent's clean exit: retained offline/shutdown, then DISCONNECT."""
        doc = {"state": "offline", "session": self.session, "reason": "shutdown"}
        await self.publish(self.topics.status(self.name), _j(doc), retain=True)
        self.client.disconnect()

    # -- paho plumbing ---------------------------------------------------------------------------
    def _unregister(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None

    def _on_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, client.loop_read)

    def _on_close(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        self._unregister()

    def _on_want_write(self, client: paho.Client, _u: Any, _sock: Any) -> None:
        if self._fd is not None:
            self._loop.add_writer(self._fd, client.loop_write)

    def _on_no_write(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        if self._fd is not None:
            self._loop.remove_writer(self._fd)

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        if not self._connack.done():
            self._connack.set_result(int(code.value))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _code: Any, _p: Any) -> None:
        future = self._acks.setdefault(mid, self._loop.create_future())
        if not future.done():
            future.set_result(None)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))


class Fleet:
    """Many `SimDevice`s on the running loop; see the module doc."""

    def __init__(
        self, host: str, port: int, secret: bytes, *, heartbeat_s: int = 1, root: str = "fabric/v1"
    ) -> None:
        self.host, self.port, self.secret = host, port, secret
        self.heartbeat_s = heartbeat_s
        self.topics = Topics(root)
        self.devices: dict[str, SimDevice] = {}
        self.silent: set[str] = set()  # live devices that skip heartbeats
        self._misc: asyncio.Task[None] | None = None

    def __getitem__(self, name: str) -> SimDevice:
        return self.devices[name]

    async def connect(
        self, names: Iterable[str], *, birth: bool = True, desired: bool = False
    ) -> None:
        """Connect `names` (with their births unless `birth` is false; subscribed to their
        desired documents with `desired`)."""
        if self._misc is None:
            self._misc = asyncio.create_task(self._keepalive(), name="fleet-keepalive")
        new = [
            SimDevice(
                n,
                host=self.host,
                port=self.port,
                secret=self.secret,
                topics=self.topics,
                heartbeat_s=self.heartbeat_s,
            )
            for n in names
        ]
        for device in new:
            self.devices[device.name] = device
        await asyncio.gather(*(d.connect() for d in new))
        if birth:
            await asyncio.gather(*(d.birth() for d in new))
        if desired:
            await asyncio.gather(*(d.subscribe_desired() for d in new))

    async def reconnect(self, name: str) -> SimDevice:
        """A new connection (new session) for `name`, with its birth."""
        old = self.devices.get(name)
        if old is not None and old.connected:
            old.drop()
        await self.connect([name])
        return self.devices[name]

    def beat(self) -> int:
        """One heartbeat from every live, non-silent device; returns how many were sent."""
        sent = 0
        for device in self.devices.values():
            if device.connected and device.name not in self.silent:
                device.heartbeat()
                sent += 1
        return sent

    @contextlib.asynccontextmanager
    async def beating(self) -> AsyncIterator[None]:
        """Heartbeats every `heartbeat_s` while the block runs (a first one at once)."""

        async def loop() -> None:
            while True:
                self.beat()
                await asyncio.sleep(self.heartbeat_s)

        task = asyncio.create_task(loop(), name="fleet-heartbeats")
        try:
            yield
        finally:
            await stop_task(task)

    async def close(self) -> None:
        for device in self.devices.values():
            if device.connected:
                device.drop()
        if self._misc is not None:
            await stop_task(self._misc)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for device in list(self.devices.values()):
                if device.connected:
                    device.client.loop_misc()
