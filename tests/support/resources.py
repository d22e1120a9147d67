"""DeviceProcess documents as the tests write and read them, on either control plane.

- `document(name, device, command, **spec)`: the resource a user writes (apiVersion, kind,
  metadata, spec in its wire spelling); `manifest(...)` is the same parsed as `devicefabric apply
  -f` reads it (defaults filled in), for the local plane's store.
- `condition(doc, type)`, `reason(doc, type)`: a condition of a status, read from a status (the
  local plane's) or from a whole object (the Kubernetes API's `{"metadata", "status"}`).
- `settled(obj, phase)`: a Kubernetes object Running (or `phase`), AgentConnected=True,
  Synced=True at its current generation.
- `set_template(command)`, `rolling_update(max_unavailable)`: a DeviceProcessSet's template and
  update strategy as stored, every default filled in (what both planes must store).
"""

from __future__ import annotations

from typing import Any, Final

import yaml

from devicefabric.bridge.controlplane.local.userfiles import Manifest, parse_manifests
from devicefabric.config.resource import API_VERSION, KIND

NAMESPACE: Final = "default"
Doc = dict[str, Any]


def key(name: str, namespace: str = NAMESPACE) -> str:
    return f"{namespace}/{name}"


def document(name: str, device: str, command: list[str], **spec: object) -> Doc:
    """A DeviceProcess as a user writes it (in the default namespace)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"deviceName": device, "command": command, **spec},
    }


def manifest(name: str, device: str, command: list[str], **spec: object) -> Manifest:
    """A DeviceProcess as `devicefabric apply -f` would read it (defaults filled in)."""
    (parsed,) = parse_manifests(yaml.safe_dump(document(name, device, command, **spec)), name)
    return parsed


def condition(doc: Doc, ctype: str) -> Doc:
    """Condition `ctype` of a status (or of a whole object's status); {} when absent."""
    status = (doc.get("status") or {}) if "metadata" in doc else doc
    for cond in status.get("conditions") or ():
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def reason(doc: Doc, ctype: str = "AgentConnected") -> str | None:
    found = condition(doc, ctype).get("reason")
    return None if found is None else str(found)


def settled(obj: Doc, phase: str = "Running") -> bool:
    """Running (or `phase`), AgentConnected=True, Synced=True, observedGeneration current."""
    status = obj.get("status") or {}
    return (
        status.get("phase") == phase
        and condition(obj, "AgentConnected").get("status") == "True"
        and condition(obj, "Synced").get("status") == "True"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )


def set_template(command: list[str]) -> Doc:
    """A DeviceProcessSet's template with `command` and every default filled in."""
    return {
        "command": command,
        "env": [],
        "restartPolicy": "Always",
        "suspend": False,
        "terminationGracePeriodSeconds": 10,
    }


def rolling_update(max_unavailable: int | str = 1) -> Doc:
    """A DeviceProcessSet's update strategy with every default filled in."""
    rolling = {"maxUnavailable": max_unavailable, "partition": 0, "progressDeadlineSeconds": 600}
    return {"type": "RollingUpdate", "rollingUpdate": {**rolling, "failurePolicy": "Stop"}}
