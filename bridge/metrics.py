"""The bridge's Prometheus metrics, in a registry of its own (one per `Bridge`).

Write-path metrics (transitions, control-plane writes, write latency, desired publishes) are
ordinary prometheus_client counters and histograms: they change at the rate of writes. Hot-path
and state metrics (messages by topic kind, invalid messages, devices by state, queue depth,
connection and leadership) are read from the service's plain counters by a collector at scrape
time, so ingesting a heartbeat touches no lock and no label lookup.

| metric | type | labels |
|---|---|---|
| `devicefabric_messages_total` | counter | `kind` (status, heartbeat, report, desired) |
| `devicefabric_invalid_messages_total` | counter | `reason` (topic, oversized, invalid_json, schema) |
| `devicefabric_devices` | gauge | `state` (connected, disconnected, unknown) |
| `devicefabric_transitions_total` | counter | `reason` (Connected, ConnectionLost, Shutdown, HeartbeatTimeout) |
| `devicefabric_controlplane_writes_total` | counter | `kind` (status, event) |
| `devicefabric_controlplane_write_errors_total` | counter | `kind`, `error` |
| `devicefabric_controlplane_write_seconds` | histogram | `kind` |
| `devicefabric_desired_published_total` | counter | |
| `devicefabric_events_dropped_total` | counter | |
| `devicefabric_queue_depth`, `devicefabric_event_queue_depth` | gauge | |
| `devicefabric_mqtt_connected`, `devicefabric_leader`, `devicefabric_ready` | gauge | |
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class StateSource:
    """Callables the collector reads at scrape time."""

    messages: Callable[[], Mapping[str, int]]
    invalid: Callable[[], Mapping[str, int]]
    devices: Callable[[], Mapping[str, int]]
    queue_depth: Callable[[], int]
    event_queue_depth: Callable[[], int]
    mqtt_connected: Callable[[], bool]
    leading: Callable[[], bool]
    ready: Callable[[], bool]


class _StateCollector(Collector):
    def __init__(self, source: StateSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        src = self._source
        messages = CounterMetricFamily(
            "devicefabric_messages", "MQTT messages received, by topic kind", labels=["kind"]
        )
        for kind, count in src.messages().items():
            messages.add_metric([kind], count)
        yield messages
        invalid = CounterMetricFamily(
            "devicefabric_invalid_messages",
            "Messages dropped as invalid (unknown topic, oversized, bad JSON, wrong schema)",
            labels=["reason"],
        )
        for reason, count in src.invalid().items():
            invalid.add_metric([reason], count)
        yield invalid
        devices = GaugeMetricFamily(
            "devicefabric_devices", "Known devices by state", labels=["state"]
        )
        for state, count in src.devices().items():
            devices.add_metric([state], count)
        yield devices
        yield GaugeMetricFamily(
            "devicefabric_queue_depth", "Keys queued or in flight in the write queue",
            value=src.queue_depth(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "devicefabric_event_queue_depth", "Events waiting to be recorded",
            value=src.event_queue_depth(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "devicefabric_mqtt_connected", "1 while connected to the broker",
            value=int(src.mqtt_connected()),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "devicefabric_leader", "1 while this replica may write", value=int(src.leading())
        )
        yield GaugeMetricFamily(
            "devicefabric_ready", "1 once subscribed and the control plane is synced",
            value=int(src.ready()),
        )  # fmt: skip


class BridgeMetrics:
    """Counters the service updates, plus the scrape-time collector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.transitions = Counter(
            "devicefabric_transitions",
            "Device connection transitions, by new reason",
            ["reason"],
            registry=self.registry,
        )
        self.writes = Counter(
            "devicefabric_controlplane_writes",
            "Control-plane writes done, by kind (status patch, event)",
            ["kind"],
            registry=self.registry,
        )
        self.write_errors = Counter(
            "devicefabric_controlplane_write_errors",
            "Control-plane writes that failed, by kind and error",
            ["kind", "error"],
            registry=self.registry,
        )
        self.write_seconds = Histogram(
            "devicefabric_controlplane_write_seconds",
            "Latency of control-plane writes",
            ["kind"],
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.desired_published = Counter(
            "devicefabric_desired_published",
            "Desired documents published (retained) to devices",
            registry=self.registry,
        )
        self.replay_reread = Counter(
            "devicefabric_replay_reread",
            "Retained documents missing from a replay and re-read by exact subscription",
            registry=self.registry,
        )
        self.replay_missing = Counter(
            "devicefabric_replay_missing",
            "Retained documents not retained by the broker after all (re-read and not there)",
            registry=self.registry,
        )
        self.events_dropped = Counter(
            "devicefabric_events_dropped",
            "Events dropped unrecorded because the event log was full",
            registry=self.registry,
        )

    async def timed_call(self, kind: str, call: Awaitable[None], bound: float) -> None:
        """Await one control-plane call within `bound` s, counting it and its latency by `kind`."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(bound):
                await call
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.write_errors.labels(kind, type(exc).__name__).inc()
            raise
        self.writes.labels(kind).inc()
        self.write_seconds.labels(kind).observe(time.monotonic() - started)

    def bind(self, source: StateSource) -> None:
        """Expose the service's state (call once)."""
        self.registry.register(_StateCollector(source))
