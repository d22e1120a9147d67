"""Simulated devices for bridge, broker and fault tests: many MQTT connections on one loop.

Each `SimDevice` is a real MQTT connection as its device (client id and username = the device
name, its derived password) with the agent's retained will, so the broker fires a real will when
`drop()` closes the socket without a DISCONNECT. The connection is the fabric's own transport (a
`runtime.mqttloop.Connection`: its socket watched by the running event loop), so hundreds of
devices cost no threads beyond each one's short connect and share the loop with the bridge under
test.

`Fleet` makes and tracks them: `connect(names)` (births; `desired=True` subscribes them to their
desired documents), `beat()` (one heartbeat from every live device), `beating()` (a heartbeat task
for a block), `drop`/`shutdown`/`reconnect`. Its keepalive task runs every live connection's
`loop_misc` each second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import paho.mqtt.client as paho

from devicefabric.config.credentials import device_password
from devicefabric.config.settings import BrokerURL
from devicefabric.config.topics import Topics
from devicefabric.runtime.mqtt import Endpoint, Will
from devicefabric.runtime.mqttloop import Connection, ConnectionLostError
from tests.support.waiting import stop_task

ACK_TIMEOUT: Final = 10.0  # seconds for a QoS 1 PUBACK


def _j(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class SimDevice:
    """One device connection; see the module doc."""

    def __init__(
        self, name: str, host: str, port: int, secret: bytes, topics: Topics, *, heartbeat_s: int
    ) -> None:
        self.name = name
        self.topics = topics
        self.heartbeat_s = heartbeat_s
        self.session = f"{secrets.token_hex(4)}.1"
        self.seq = 0
        self.messages: list[tuple[str, bytes, bool]] = []
        endpoint = Endpoint(
            broker=BrokerURL(host, port, tls=False),
            client_id=name,
            username=name,
            password=device_password(secret, name),
            keepalive=60,
        )
        will = _j({"state": "offline", "session": self.session, "reason": "lost"})
        self.connection = Connection(
            endpoint, Will(topics.status(name), will), session=self.session
        )
        self.connection.on_message = self._on_message
        self._opened = False

    @property
    def client(self) -> paho.Client:
        return self.connection.client

    @property
    def connected(self) -> bool:
        return self._opened and not self.connection.lost.done()

    # -- acting ----------------------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            reason = await self.connection.open()
        if reason.is_failure:
            self.connection.abandon()
            raise AssertionError(f"{self.name}: CONNACK {reason}")
        self._opened = True

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish; at QoS 1 wait for the PUBACK (AssertionError when the link is down)."""
        if qos == 0:
            if self.connection.publish(topic, payload, qos=0, retain=retain) is None:
                raise AssertionError(f"{self.name}: publish to {topic} failed: not connected")
            return
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                await self.connection.publish_acked(topic, payload, retain=retain)
        except ConnectionLostError as exc:
            raise AssertionError(f"{self.name}: publish to {topic} failed: {exc}") from exc

    async def birth(self) -> None:
        doc = {"state": "online", "session": self.session, "heartbeat_s": self.heartbeat_s}
        await self.publish(self.topics.status(self.name), _j({**doc, "agent": "sim"}), retain=True)

    def heartbeat(self) -> None:
        self.seq += 1
        payload = _j({"session": self.session, "seq": self.seq})
        self.connection.publish(self.topics.heartbeat(self.name), payload, qos=0, retain=False)

    async def report(self, processes: dict[str, dict[str, Any]], revision: str = "r0") -> None:
        self.seq += 1
        doc = {"session": self.session, "seq": self.seq, "revision": revision}
        payload = _j({**doc, "processes": processes})
        await self.publish(self.topics.report(self.name), payload, retain=True)

    async def subscribe_desired(self) -> None:
        """Queue the SUBSCRIBE to the device's desired document (its SUBACK is not awaited)."""
        self.connection.subscribe([(self.topics.desired(self.name), 1)])

    def drop(self) -> None:
        """Close the socket without a DISCONNECT: the broker fires the will (kill -9)."""
        self.connection.abandon()

    async def shutdown(self) -> None:
        """The agent's clean exit: retained offline/shutdown, then DISCONNECT."""
        doc = {"state": "offline", "session": self.session, "reason": "shutdown"}
        last = Will(self.topics.status(self.name), _j(doc))
        if not await self.connection.close(last, bound=ACK_TIMEOUT):
            raise AssertionError(f"{self.name}: the offline status was not acknowledged")

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload, retained))


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
        beat = self.heartbeat_s
        new = [
            SimDevice(n, self.host, self.port, self.secret, self.topics, heartbeat_s=beat)
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
                    device.connection.loop_misc()
