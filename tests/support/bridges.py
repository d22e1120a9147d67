"""Arranging a bridge under test: settings for a test broker, a running bridge, settle waits, and
`http_get` of what it serves."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.mqtt import LinkHandler, LinkSettings, MqttLink
from devicefabric.bridge.service import Bridge, BridgeSettings, default_client_id
from devicefabric.bridge.statuses import plan_status
from devicefabric.bridge.tracking import Device
from devicefabric.config.mergepatch import merge_patch
from devicefabric.config.resource import Reason
from devicefabric.config.settings import parse_broker_url
from devicefabric.config.topics import DEFAULT_ROOT, Topics
from tests.support.brokers import BrokerProcess
from tests.support.memoryplane import MemoryControlPlane
from tests.support.waiting import async_wait_for


def settings(broker: BrokerProcess, **overrides: Any) -> BridgeSettings:
    """Fast, unthrottled defaults; tests override what they measure."""
    base: dict[str, Any] = {
        "broker": parse_broker_url(broker.url),
        "password": broker.password("bridge"),
        "client_id": f"bridge_test-{uuid.uuid4().hex[:8]}",
        "write_qps": 1000.0,
        "write_burst": 1000,
        "event_qps": 1000.0,
        "event_burst": 1000,
        "keepalive": 10,
    }
    return BridgeSettings(**{**base, **overrides})


def link(url: str, password: str, handler: LinkHandler, **overrides: Any) -> MqttLink:
    """A bridge MQTT link (user `bridge`, a fresh client id, the default root) to `url`."""
    settings = LinkSettings(
        broker=parse_broker_url(url),
        password=password,
        client_id=default_client_id(),
        topics=Topics(DEFAULT_ROOT),
        **overrides,
    )
    return MqttLink(settings, handler)


@contextlib.asynccontextmanager
async def running(
    broker: BrokerProcess, control_plane: Any, **overrides: Any
) -> AsyncIterator[Bridge]:
    """A started bridge, ready (subscribed, retained state read, control plane synced)."""
    fleet = getattr(control_plane, "fleet", None)  # the local plane's Devices and sets
    async with Bridge(settings(broker, **overrides), control_plane, fleet=fleet) as bridge:
        await async_wait_for(bridge.is_ready, timeout=15, what="bridge ready")
        await async_wait_for(lambda: bridge.snapshot().resyncs > 0, what="the first full reconcile")
        yield bridge


def idle(bridge: Bridge, cp: MemoryControlPlane) -> bool:
    """Nothing queued or in flight, and no write echo on its way back."""
    state = bridge.snapshot()
    return state.queue_depth == 0 and state.event_queue_depth == 0 and cp.quiet()


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    await async_wait_for(predicate, timeout=timeout, interval=0.005, what=what)


async def settle(bridge: Bridge, cp: MemoryControlPlane, timeout: float = 10.0) -> None:
    """Wait until idle twice in a row (an echo may enqueue a key right after a write)."""
    for _ in range(2):
        await until(lambda: idle(bridge, cp), timeout, "bridge idle")


def settled_status(resource: Resource, reason: Reason) -> dict[str, object]:
    """The status the bridge would have written for a device in `reason` with no report."""
    plan = plan_status(resource, Device("x", session="s", reason=reason), "2024-01-01T00:00:00Z")
    return {} if plan is None else merge_patch({}, plan.patch)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body
