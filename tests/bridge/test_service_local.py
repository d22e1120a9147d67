"""Tier 2: the bridge on the local control plane (real files, `devicefabric apply`) and the
embedded broker (`devicefabric broker run`), with a simulated device."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
from devicefabric.bridge.service import Bridge
from tests.support.bridges import running, until
from tests.support.brokers import BrokerProcess
from tests.support.cli import manifest_text, run_cli, write_manifest
from tests.support.devices import Fleet


def reason(plane: LocalControlPlane, key: str, ctype: str = "AgentConnected") -> str | None:
    res = plane.get(key)
    conditions = res.status.get("conditions") if res is not None else None
    for cond in conditions if isinstance(conditions, list) else []:
        if cond["type"] == ctype:
            return str(cond["reason"])
    return None


async def idle(bridge: Bridge) -> None:
    for _ in range(2):
        await until(lambda: bridge.snapshot().queue_depth == 0, what="queue drained")


def test_local_control_plane_and_embedded_broker(
    embedded: BrokerProcess, secret: bytes, tmp_path: Path
) -> None:
    """apply -> desired reaches the device -> status in the state dir; kill -9 -> ConnectionLost
    and one Warning Event on disk; a bridge restart over the same directory writes nothing."""
    broker = embedded
    state = tmp_path / "state"
    manifest = write_manifest(
        tmp_path / "web.yaml", manifest_text("web", "tor9-99", ["sleep", "9"])
    )
    assert run_cli("apply", "-f", str(manifest), "--state-dir", str(state)).code == 0
    key = "default/web"

    async def story() -> None:
        fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=1)
        await fleet.connect(["tor9-99"], desired=True)
        device = fleet["tor9-99"]
        try:
            async with fleet.beating():
                plane = LocalControlPlane(state, poll_interval=0.02)
                async with running(broker, plane) as bridge:
                    await until(lambda: any(m[0].endswith("/desired") for m in device.messages))
                    desired = json.loads(device.messages[-1][1])
                    (process,) = desired["processes"]
                    report = {"generation": process["generation"], "phase": "Running", "pid": 9}
                    await device.report({key: report}, revision=desired["revision"])
                    await until(lambda: reason(plane, key, "Synced") == "Applied")
                    await until(lambda: reason(plane, key) == "Connected")
                    await idle(bridge)
                    res = plane.get(key)
                    assert res is not None
                    assert (res.status["phase"], res.status["pid"]) == ("Running", 9)

                    device.drop()
                    await until(lambda: reason(plane, key) == "ConnectionLost", timeout=3)
                    await idle(bridge)
                    events = [(e["type"], e["reason"]) for e in plane.store.events()]
                    assert events == [("Normal", "Connected"), ("Warning", "ConnectionLost")]
                revision = plane.store.revision()

                second = LocalControlPlane(state, poll_interval=0.02)
                async with running(broker, second) as bridge:
                    await until(lambda: "tor9-99" in bridge.snapshot("tor9-99").devices)
                    await idle(bridge)
                    assert second.store.revision() == revision  # nothing written
                    # Connected, ConnectionLost from the first run: a restart adds none.
                    assert len(second.store.events()) == 2
        finally:
            await fleet.close()

    asyncio.run(story())


def _latest(device: Any, key: str) -> tuple[int, str]:
    """The generation of `key` in the last desired the device received, and its revision."""
    for topic, payload, _retain in reversed(device.messages):
        if topic.endswith("/desired") and payload:
            doc = json.loads(payload)
            for process in doc["processes"]:
                if f"{process['namespace']}/{process['name']}" == key:
                    return int(process["generation"]), str(doc["revision"])
    return 0, ""


def _status(plane: LocalControlPlane, key: str, field: str) -> object:
    res = plane.get(key)
    return None if res is None else res.status.get(field)


def test_a_spec_change_is_one_status_write_at_once_on_the_local_plane(
    embedded: BrokerProcess, secret: bytes, tmp_path: Path
) -> None:
    """Spec change -> the device reports Pending then Running at the new generation: exactly one
    status write (the Running one), written at once although the settle is long; a change the
    device never completes (it stays Pending) is still written after the settle, once."""
    broker, state = embedded, tmp_path / "state"
    web, job = "default/web", "default/job"
    settle = 2.0  # long, so that a write made before it elapses was made at once

    def apply(name: str, seconds: str) -> None:
        text = manifest_text(name, "tor9-99", ["sleep", seconds])
        manifest = write_manifest(tmp_path / f"{name}.yaml", text)
        assert run_cli("apply", "-f", str(manifest), "--state-dir", str(state)).code == 0

    apply("web", "9")
    apply("job", "9")
    plane = LocalControlPlane(state, poll_interval=0.02)

    async def story() -> None:
        fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=1)
        await fleet.connect(["tor9-99"], desired=True)
        device = fleet["tor9-99"]
        entries: dict[str, dict[str, object]] = {}

        async def report(key: str, phase: str, generation: int) -> None:
            await until(lambda: _latest(device, key)[0] == generation, what="desired received")
            entries[key] = {"generation": generation, "phase": phase, "pid": 9}
            await device.report(dict(entries), revision=_latest(device, key)[1])

        try:
            async with fleet.beating(), running(broker, plane, settle=settle) as bridge:
                await report(web, "Running", 1)
                await report(job, "Running", 1)
                await until(
                    lambda: {_status(plane, k, "observedGeneration") for k in (web, job)} == {1}
                )
                await idle(bridge)

                before = plane.store.revision()
                apply("web", "10")
                await report(web, "Pending", 2)  # intermediate: coalesced, never written
                await report(web, "Running", 2)
                await until(
                    lambda: _status(plane, web, "observedGeneration") == 2,
                    timeout=settle * 0.6,
                    what="the completing report written before the settle",
                )
                await idle(bridge)
                assert plane.store.revision() == before + 2  # the apply and one status write
                assert _status(plane, web, "phase") == "Running"
                assert reason(plane, web, "Synced") == "Applied"

                # A change the device does not complete: its phase Pending after the settle.
                before = plane.store.revision()
                apply("job", "10")
                await report(job, "Pending", 2)
                await until(lambda: _status(plane, job, "phase") == "Pending", timeout=15)
                await idle(bridge)
                assert plane.store.revision() == before + 2
        finally:
            await fleet.close()

    asyncio.run(story())
