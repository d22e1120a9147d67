"""Tier 3: Devices and DeviceProcessSets end to end on both control planes (`scenario.tell`).

Kubernetes: the bridge is a real `bridge run --control-plane kube` subprocess against the fake
API server; history is a watch of DeviceProcesses (every version, in order), and the bridge's
writes per phase are counted on the request log (printed: the issue asks for the figures). Local:
the bridge runs in-process over a state directory (a `LoopThread`: its own loop in a thread) and
history is every state its cache went through (all writes to processes are the bridge's own and
are adopted at once); the operator's side is the real CLI (`label`, `apply`, `delete`).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.controlplane.local.fleet import set_store
from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
from devicefabric.bridge.service import Bridge
from devicefabric.config.fleet import SET_LABEL
from tests.fleets.scenario import DEVICES, ROLE, SET_NAME, Snapshot, snapshot, tell, tell_rollback
from tests.support.bridges import settings
from tests.support.cli import cli_argv, run_cli
from tests.support.fabric import Fabric, audited
from tests.support.fakeapi.client import WatchEnded
from tests.support.inproc import LoopThread
from tests.support.waiting import wait_for

API = "/apis/devicefabric.io/v1alpha1"
SETS = f"{API}/namespaces/default/deviceprocesssets"
PROCESSES = f"{API}/namespaces/default/deviceprocesses"


def set_document(
    spec_template: dict[str, Any],
    max_unavailable: int,
    paused: bool,
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "devicefabric.io/v1alpha1",
        "kind": "DeviceProcessSet",
        "metadata": {"name": SET_NAME, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {ROLE: "collector"}},
            "template": spec_template,
            "updateStrategy": {"rollingUpdate": strategy or {"maxUnavailable": max_unavailable}},
            "paused": paused,
        },
    }


# -- Kubernetes --------------------------------------------------------------------------------
class KubeWorld:
    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.http = fabric.http
        self.history: list[Snapshot] = []
        self.phases: list[tuple[str, Counter[str]]] = []
        self._since = time.monotonic()
        self._stop = threading.Event()
        listed = self.http.get(PROCESSES).body
        self._objects = {o["metadata"]["name"]: o for o in listed["items"]}
        self._watcher = threading.Thread(
            target=self._watch, args=(listed["metadata"]["resourceVersion"],), daemon=True
        )
        self._watcher.start()

    def _watch(self, rv: str) -> None:
        ended = WatchEnded()
        for event in self.http.watch(PROCESSES, ended, timeout=120, resourceVersion=rv):
            obj = event["object"]
            if event["type"] == "DELETED":
                self._objects.pop(obj["metadata"]["name"], None)
            elif event["type"] in ("ADDED", "MODIFIED"):
                self._objects[obj["metadata"]["name"]] = obj
            self.history.append(snapshot(list(self._objects.values())))
            if self._stop.is_set():
                return

    def close(self) -> None:
        self._stop.set()

    def wait_devices(self) -> None:
        wait_for(
            lambda: self.fabric.devices_settled(dict.fromkeys(DEVICES, 0)), 30, 0.05, what="Devices"
        )

    def label(self, device: str, value: str | None) -> None:
        resp = self.http.merge(f"{API}/devices/{device}", {"metadata": {"labels": {ROLE: value}}})
        assert resp.status == 200, resp.body

    def apply_strategy(self, template: dict[str, Any], strategy: dict[str, Any]) -> None:
        self._apply(set_document(template, 1, paused=False, strategy=strategy))

    def rollout(self, action: str) -> tuple[int, str]:
        env = {**os.environ, "KUBECONFIG": str(self.fabric.admin_kubeconfig)}
        proc = subprocess.run(
            cli_argv("rollout", action, SET_NAME, "--control-plane", "kube", "--timeout", "0"),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        return proc.returncode, proc.stdout

    def apply_set(self, template: dict[str, Any], max_unavailable: int, paused: bool) -> None:
        self._apply(set_document(template, max_unavailable, paused))

    def _apply(self, doc: dict[str, Any]) -> None:
        resp = self.http.merge(f"{SETS}/{SET_NAME}", {"spec": doc["spec"]})
        if resp.status == 404:
            resp = self.http.request("POST", SETS, doc)
        assert resp.status in (200, 201), resp.body

    def delete_set(self) -> None:
        assert self.http.request("DELETE", f"{SETS}/{SET_NAME}").status == 200

    def owned(self) -> dict[str, dict[str, Any]]:
        items = self.http.get(PROCESSES, labelSelector=f"{SET_LABEL}={SET_NAME}").body["items"]
        return {o["spec"]["deviceName"]: o for o in items}

    def set_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.http.get(f"{SETS}/{SET_NAME}").body
        return obj

    def kill_agent(self, device: str) -> None:
        self.fabric.kill_agent(device)

    def start_agent(self, device: str) -> None:
        self.fabric.start_agent(device)

    def mark(self, phase: str) -> None:
        """Count the bridge's writes since the last mark: `verb resource` -> n."""
        now = time.monotonic()
        counts: Counter[str] = Counter(
            f"{r.info.verb} {r.info.resource}{'/' + r.info.subresource if r.info.subresource else ''}"
            for r in self.fabric.api.log.records()
            if r.user.startswith("system:serviceaccount")
            and self._since <= r.monotonic < now
            and r.info.verb in ("create", "patch", "update", "delete")
            and r.status < 300
        )
        self.phases.append((phase, counts))
        self._since = now


@pytest.mark.parametrize("story", [tell, tell_rollback], ids=["fleet", "rollback"])
def test_fleets_on_kubernetes(tmp_path: Path, secret: bytes, story: Callable[..., None]) -> None:
    with audited(tmp_path, secret, DEVICES) as fabric:
        fabric.start_bridge("bridge-0")
        for device in DEVICES:
            fabric.start_agent(device)
        world = KubeWorld(fabric)
        try:
            story(world)
        finally:
            world.close()
        print()
        for phase, counts in world.phases:
            print(f"[writes] {phase}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
        heartbeat_phase = dict(world.phases)
        assert heartbeat_phase  # every phase was counted


# -- local -------------------------------------------------------------------------------------
class RecordingPlane(LocalControlPlane):
    """The bridge's own plane, recording the set's processes after every change of its cache."""

    history: list[Snapshot]

    async def run(self, on_change: Callable[[str], None]) -> None:
        self.history = []

        def recording(key: str) -> None:
            on_change(key)
            self.history.append(snapshot([_document(r) for r in self.resources()]))

        await super().run(recording)


def _document(res: Resource) -> dict[str, Any]:
    return {
        "metadata": {"name": res.name, "generation": res.generation, "labels": dict(res.labels)},
        "spec": dict(res.spec),
        "status": dict(res.status),
    }


class LocalWorld:
    def __init__(self, fabric: Fabric, state: Path, plane: RecordingPlane) -> None:
        self.fabric = fabric
        self.state = state
        self.plane = plane
        self.file = state.parent / "set.yaml"

    @property
    def history(self) -> list[Snapshot]:
        return self.plane.history

    def _cli(self, *args: str) -> str:
        result = run_cli(*args, "--state-dir", str(self.state))
        assert result.code == 0, result.err
        return result.out

    def wait_devices(self) -> None:
        def ready() -> bool:
            out = json.loads(self._cli("get", "devices", "-o", "json"))
            rows = {
                d["metadata"]["name"]: [
                    c["status"] for c in d.get("status", {}).get("conditions", [])
                ]
                for d in out["items"]
            }
            return rows == {d: ["True"] for d in DEVICES}

        wait_for(ready, 30, 0.1, what="Devices created and Connected")

    def label(self, device: str, value: str | None) -> None:
        change = f"{ROLE}=collector" if value else f"{ROLE}-"
        self._cli("label", "device", device, change, "--overwrite")

    def apply_set(self, template: dict[str, Any], max_unavailable: int, paused: bool) -> None:
        self._apply(set_document(template, max_unavailable, paused))

    def apply_strategy(self, template: dict[str, Any], strategy: dict[str, Any]) -> None:
        self._apply(set_document(template, 1, paused=False, strategy=strategy))

    def _apply(self, doc: dict[str, Any]) -> None:
        self.file.write_text(yaml.safe_dump(doc), encoding="utf-8")
        self._cli("apply", "-f", str(self.file))

    def rollout(self, action: str) -> tuple[int, str]:
        result = run_cli(
            "rollout", action, SET_NAME, "--state-dir", str(self.state), "--timeout", "0"
        )
        return result.code, result.out

    def delete_set(self) -> None:
        self._cli("delete", "dpset", SET_NAME)

    def owned(self) -> dict[str, dict[str, Any]]:
        return {
            r.device or "": _document(r)
            for r in self.plane.store.load_all().values()
            if r.labels.get(SET_LABEL) == SET_NAME
        }

    def set_object(self) -> dict[str, Any]:
        res = set_store(self.state).load(f"default/{SET_NAME}")
        assert res is not None
        return {
            "metadata": {"generation": res.generation},
            "spec": dict(res.spec),
            "status": dict(res.status),
        }

    def kill_agent(self, device: str) -> None:
        self.fabric.kill_agent(device)

    def start_agent(self, device: str) -> None:
        self.fabric.start_agent(device)

    def mark(self, phase: str) -> None:
        """The local plane's writes are files: nothing counted here (the kube test counts)."""


@pytest.mark.parametrize("story", [tell, tell_rollback], ids=["fleet", "rollback"])
def test_fleets_on_the_local_control_plane(
    tmp_path: Path, secret: bytes, story: Callable[..., None]
) -> None:
    state = tmp_path / "state"
    plane = RecordingPlane(state)
    with Fabric.mosquitto(tmp_path, secret, DEVICES) as fabric:
        config = settings(fabric.broker)
        bridge = LoopThread(
            lambda: Bridge(config, plane, fleet=plane.fleet),
            ready=lambda bridge: bridge.wait_ready(),
            name="bridge",
            timeout=30,
        )
        with bridge:
            for device in DEVICES:
                fabric.start_agent(device)
            story(LocalWorld(fabric, state, plane))
