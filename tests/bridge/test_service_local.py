"""Tier 2: the bridge on the local control plane (real files, `devicefabric apply`) and the
embedded broker (`devicefabric broker run`), with a simulated device."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from devicefabric.bridge.controlplane.local import LocalControlPlane
from devicefabric.bridge.service import Bridge
from tests.bridge.fleet import Fleet
from tests.bridge.scene import running, until
from tests.support.brokers import BrokerProcess
from tests.support.cli import manifest_text, run_cli, write_manifest


def reason(plane: LocalControlPlane, key: str, ctype: str = "AgentConnected") -> str | None:
    res = plane.get(key)
    conditions = res.status.get("conditions") if res is not None else None
    for cond in conditions if isinstance(conditions, list) else []:
        if cond["type"] == ctype:
            return str(cond["reason"])
    return None


async def idle(bridge: Bridge) -> None:
    for _ in range(2):
        await until(lambda: len(bridge.queue) == 0, what="queue drained")


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
        await fleet.connect(["tor9-99"])
        device = fleet["tor9-99"]
        await device.subscribe_desired()
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
                    await until(lambda: bridge.tracker.get("tor9-99") is not None)
                    await idle(bridge)
                    assert second.store.revision() == revision  # nothing written
                    # Connected, ConnectionLost from the first run: a restart adds none.
                    assert len(second.store.events()) == 2
        finally:
            await fleet.close()

    asyncio.run(story())
