"""The documents the bridge serves over HTTP (`/healthz`, `/readyz`, `/metrics`, `/devices`).

Pure functions from the service's state to `http.Response`s; `http.HttpServer` does the serving.

- `/healthz`: 200 while the event loop answers and the MQTT link has not been down (not primed)
  for longer than the bound (`BridgeSettings.mqtt_down_limit`, `--mqtt-down-limit`); 503 with
  the seconds it has been down past that, so a bridge wedged on its broker link gets restarted.
- `/readyz`: 200 once subscribed with the retained state read back and the control plane synced,
  503 otherwise; the JSON says why, the MQTT session, and the role (`leader` or `standby`); a
  standby also says why it is not leading (`notLeading`) when the control plane knows.
- `/metrics`: the Prometheus text of the bridge's registry (`metrics`).
- `/devices`: every device the bridge knows: state, reason, session, seconds since it was last
  seen (the bridge's monotonic clock), heartbeat period, agent version, its resources and the
  processes of its last report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from devicefabric.bridge.http import Response
from devicefabric.bridge.mirroring import ResourceIndex
from devicefabric.bridge.tracking import Device, DeviceTracker


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
class Readiness:
    mqtt_connected: bool
    mqtt_primed: bool
    session: str
    synced: bool
    leading: bool
    queue_depth: int
    not_leading: str | None = None  # why a standby is not leading, when the control plane knows

    @property
    def ready(self) -> bool:
        return self.mqtt_primed and self.synced


def readyz(state: Readiness) -> Response:
    mqtt = "primed" if state.mqtt_primed else "connected" if state.mqtt_connected else "down"
    doc = {
        "ready": state.ready,
        "mqtt": mqtt,
        "session": state.session,
        "controlPlaneSynced": state.synced,
        "role": "leader" if state.leading else "standby",
        "queueDepth": state.queue_depth,
    }
    if not state.leading and state.not_leading:
        doc["notLeading"] = state.not_leading
    return Response(200 if state.ready else 503, _json(doc))


def metrics(registry: CollectorRegistry) -> Response:
    return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)


def device_doc(device: Device, index: ResourceIndex, now: float) -> dict[str, object]:
    report = device.report
    seen = device.last_seen
    return {
        "device": device.name,
        "state": device.state,
        "reason": device.reason.value if device.reason is not None else None,
        "session": device.session,
        "lastSeenAgeSeconds": round(now - seen, 3) if seen is not None else None,
        "heartbeatSeconds": device.heartbeat_s,
        "agent": device.agent,
        "resources": sorted(index.keys_of(device.name)),
        "processes": {
            key: entry.model_dump(mode="json", by_alias=True, exclude_none=True)
            for key, entry in sorted(report.processes.items())
        }
        if report is not None
        else {},
    }


def devices(tracker: DeviceTracker, index: ResourceIndex, now: float) -> Response:
    docs = [device_doc(d, index, now) for d in sorted(tracker, key=lambda d: d.name)]
    return Response(200, _json(docs))
