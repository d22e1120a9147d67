"""The documents the bridge serves over HTTP (`/healthz`, `/readyz`, `/metrics`, `/devices`).

Pure functions from the service's state (a `BridgeSnapshot`, `DeviceView`s) to `http.Response`s;
`http.HttpServer` does the serving.

- `/healthz`: 200 while the event loop answers and the MQTT link has not been down (not primed)
  for longer than the bound (`BridgeSettings.mqtt_down_limit`, `--mqtt-down-limit`); 503 with
  the seconds it has been down past that, so a bridge wedged on its broker link gets restarted.
- `/readyz`: 200 once subscribed with the retained state read back and the control plane synced,
  503 otherwise; the JSON says why, the MQTT session, and the role (`leader` or `standby`); a
  standby also says why it does not lead (`notLeading`: e.g. who holds the Lease, the last error).
- `/metrics`: the Prometheus text of the bridge's registry (`metrics`).
- `/devices`: every device the bridge knows, by name: state, reason, session, seconds since it was
  last seen (the bridge's monotonic clock), heartbeat period, agent version, the device facts of
  its latest birth (`facts`, keyed like the Device status: os, arch, kernel, hostname, cpus,
  memoryBytes; `{}` when its agent sent none), its resources and the processes of its last report; one device per line. `?limit=N&after=NAME` pages through it (the
  next page starts after the last name of this one). The event loop only copies each device's
  fields (`views_of`), a few hundred devices at a time with a turn for everything else between
  (`VIEW_CHUNK`), and the document is built in a worker thread (`render_devices`): at 10,000
  devices the loop is held ~5-10 ms at a time instead of ~30 ms.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from devicefabric.bridge.http import Response
from devicefabric.bridge.mirroring import ResourceIndex
from devicefabric.bridge.tracking import Device, DeviceTracker, Facts
from devicefabric.config.wire import Report

MAX_PAGE: Final = 100_000
VIEW_CHUNK: Final = 500  # devices copied per turn of the event loop (`/devices`)


def _json(doc: object) -> bytes:
    return json.dumps(doc, indent=1).encode() + b"\n"


def healthz(mqtt_down_for: float | None = None, limit: float | None = None) -> Response:
    """200, or 503 when the MQTT link has been down for `mqtt_down_for` > `limit` seconds."""
    if mqtt_down_for is not None and limit is not None and mqtt_down_for > limit:
        doc = {
            "status": "unhealthy",
            "reason": f"the MQTT link has been down for {mqtt_down_for:.0f}s (limit {limit:g}s)",
        }
        return Response(503, _json(doc))
    return Response(200, b'{"status":"ok"}\n')


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device's fields, copied on the event loop (the report is an immutable model)."""

    name: str
    state: str
    reason: str | None
    session: str | None
    last_seen_age: float | None
    heartbeat_s: int
    agent: str
    resources: tuple[str, ...]
    report: Report | None
    facts: Facts  # read-only, and replaced (never changed) by the tracker: safe in a thread


@dataclass(frozen=True, slots=True)
class BridgeSnapshot:
    """What one bridge knows and does at one moment (`Bridge.snapshot()`): a copy, never changed.

    `/readyz` and `/healthz` are rendered from it, the metrics collector reads its gauges and the
    hot-path counters from it at scrape time, and tests wait on it. `devices` holds the views of
    the devices the snapshot was asked for (none by default). Taking one copies the counters and
    makes one pass over the tracked devices for `device_states`; `/healthz` reads the link's age
    directly instead.
    """

    mqtt_connected: bool
    mqtt_primed: bool
    session: str
    synced: bool
    leading: bool
    queue_depth: int
    not_leading: str | None = None  # why a standby does not lead (the control plane's reason)
    shards: tuple[int, ...] | None = None  # shards held with --shards > 1 (None: one leader)
    mqtt_down_for: float | None = None  # s the link has not been primed (None: it is)
    event_queue_depth: int = 0
    resyncs: int = 0  # full reconciliations started (each leadership or shard gain)
    messages: Mapping[str, int] = field(default_factory=dict)  # ingested, by topic kind
    invalid: Mapping[str, int] = field(default_factory=dict)  # dropped, by reason
    device_states: Mapping[str, int] = field(default_factory=dict)  # known devices by state
    desired_read_back: int = 0  # devices whose retained `desired` the bridge has read back
    devices: Mapping[str, DeviceView] = field(default_factory=dict)  # the views asked for, by name

    @property
    def ready(self) -> bool:
        return self.mqtt_primed and self.synced


def readyz(state: BridgeSnapshot) -> Response:
    mqtt = "primed" if state.mqtt_primed else "connected" if state.mqtt_connected else "down"
    doc = {
        "ready": state.ready,
        "mqtt": mqtt,
        "session": state.session,
        "controlPlaneSynced": state.synced,
        "role": "leader" if state.leading else "standby",
        "queueDepth": state.queue_depth,
    }
    if state.shards is not None:
        doc["shards"] = list(state.shards)
    if not state.leading:
        doc["notLeading"] = state.not_leading or "not elected"
    return Response(200 if state.ready else 503, _json(doc))


def metrics(registry: CollectorRegistry) -> Response:
    return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)


def page_views(
    tracker: DeviceTracker, index: ResourceIndex, now: float, query: Mapping[str, str]
) -> list[DeviceView]:
    """The devices `query` asks for (`limit`, `after`), sorted by name."""
    return views_of(tracker, index, now, page(tracker, query))


def page(tracker: DeviceTracker, query: Mapping[str, str]) -> list[str]:
    """The names `query` asks for (`limit`, `after`), sorted (ValueError for a bad `limit`)."""
    limit = _int(query.get("limit"), "limit", MAX_PAGE)
    after = query.get("after", "")
    return sorted(name for name in tracker.names() if name > after)[:limit]


def views_of(
    tracker: DeviceTracker, index: ResourceIndex, now: float, names: Iterable[str]
) -> list[DeviceView]:
    """The fields of each named device the tracker still knows (a copy: safe to render in a
    thread while the tracker moves on)."""
    views = []
    for name in names:
        device = tracker.get(name)
        if device is not None:
            views.append(_view(device, index, now))
    return views


def _view(device: Device, index: ResourceIndex, now: float) -> DeviceView:
    seen = device.last_seen
    return DeviceView(
        name=device.name,
        state=device.state,
        reason=device.reason.value if device.reason is not None else None,
        session=device.session,
        last_seen_age=round(now - seen, 3) if seen is not None else None,
        heartbeat_s=device.heartbeat_s,
        agent=device.agent,
        resources=tuple(sorted(index.keys_of(device.name))),
        report=device.report,
        facts=device.facts,
    )


def _int(raw: str | None, what: str, default: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= MAX_PAGE:
        raise ValueError(f"{what} must be a whole number from 1 to {MAX_PAGE}, got {raw[:40]!r}")
    return int(raw)


def device_doc(view: DeviceView) -> dict[str, object]:
    report = view.report
    return {
        "device": view.name,
        "state": view.state,
        "reason": view.reason,
        "session": view.session,
        "lastSeenAgeSeconds": view.last_seen_age,
        "heartbeatSeconds": view.heartbeat_s,
        "agent": view.agent,
        "facts": dict(view.facts),
        "resources": list(view.resources),
        "processes": {
            key: entry.model_dump(mode="json", by_alias=True, exclude_none=True)
            for key, entry in sorted(report.processes.items())
        }
        if report is not None
        else {},
    }


def render_devices(views: Iterable[DeviceView]) -> Response:
    """The `/devices` document: a JSON array, one device per line (thread-safe: views only)."""
    lines = [json.dumps(device_doc(v), separators=(",", ":")) for v in views]
    body = "[\n" + ",\n".join(lines) + ("\n]\n" if lines else "]\n")
    return Response(200, body.encode())
