"""The bridge's Prometheus metrics, in a registry of its own (one per `Bridge`).

Write-path metrics (transitions, control-plane writes, write latency, desired publishes) are
ordinary prometheus_client counters and histograms: they change at the rate of writes. Hot-path
and state metrics (messages by topic kind, invalid messages, devices by state, queue depth,
connection and leadership) are read from one `api.BridgeSnapshot` of the service by a collector at
scrape time, so ingesting a heartbeat touches no lock and no label lookup.

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
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from devicefabric.bridge.api import BridgeSnapshot

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StateCollector(Collector):
    """The hot-path counters and the state gauges, read from one `BridgeSnapshot` per scrape."""

    def __init__(self, snapshot: Callable[[], BridgeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        for family, name, doc, label, values in (
            (CounterMetricFamily, "devicefabric_messages", "MQTT messages received, by topic kind",
             "kind", state.messages),
            (CounterMetricFamily, "devicefabric_invalid_messages",
             "Messages dropped as invalid (unknown topic, oversized, bad JSON, wrong schema)",
             "reason", state.invalid),
            (GaugeMetricFamily, "devicefabric_devices", "Known devices by state", "state",
             state.device_states),
        ):  # fmt: skip
            metric = family(name, doc, labels=[label])
            for value, count in values.items():
                metric.add_metric([value], count)
            yield metric
        for name, doc, gauge in (
            ("devicefabric_queue_depth", "Keys queued or in flight in the write queue",
             state.queue_depth),
            ("devicefabric_event_queue_depth", "Events waiting to be recorded",
             state.event_queue_depth),
            ("devicefabric_mqtt_connected", "1 while connected to the broker",
             int(state.mqtt_connected)),
            ("devicefabric_leader", "1 while this replica may write", int(state.leading)),
            ("devicefabric_ready", "1 once subscribed and the control plane is synced",
             int(state.ready)),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, doc, value=gauge)


class BridgeMetrics:
    """Counters the service updates, plus the scrape-time collector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.transitions = counter(
            "devicefabric_transitions", "Device connection transitions, by new reason", "reason"
        )
        self.writes = counter(
            "devicefabric_controlplane_writes",
            "Control-plane writes done, by kind (status patch, event)",
            "kind",
        )
        self.write_errors = counter(
            "devicefabric_controlplane_write_errors",
            "Control-plane writes that failed, by kind and error",
            "kind",
            "error",
        )
        self.write_seconds = Histogram(
            "devicefabric_controlplane_write_seconds",
            "Latency of control-plane writes",
            ["kind"],
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.desired_published = counter(
            "devicefabric_desired_published", "Desired documents published (retained) to devices"
        )
        self.replay_reread = counter(
            "devicefabric_replay_reread",
            "Retained documents missing from a replay and re-read by exact subscription",
        )
        self.replay_missing = counter(
            "devicefabric_replay_missing",
            "Retained documents not retained by the broker after all (re-read and not there)",
        )
        self.events_dropped = counter(
            "devicefabric_events_dropped",
            "Events dropped unrecorded because the event log was full",
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

    def bind(self, snapshot: Callable[[], BridgeSnapshot]) -> None:
        """Expose the service's state, read from `snapshot()` at each scrape (call once)."""
        self.registry.register(_StateCollector(snapshot))
