"""Tier 2: the fleet controller in the bridge on the local control plane, with simulated devices.

What the end-to-end story (`tests/fleets`) does not show: one Device create per birth (an
operator's deletion waits for the next birth), a name taken by someone else's DeviceProcess, a
bridge restart over settled state writing nothing, and a set deleted while no bridge ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from devicefabric.bridge.controlplane.local.fleet import LocalFleet, device_store, set_store
from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
from devicefabric.bridge.controlplane.local.userfiles import Manifest
from devicefabric.config.fleet import DEVICE_KIND, SET_KIND, SET_LABEL, DeviceProcessSetSpec
from tests.support.bridges import running, until
from tests.support.brokers import BrokerProcess
from tests.support.devices import Fleet

DEVICES = ("d1", "d2", "d3")


def set_manifest(name: str = "collector", **spec: Any) -> Manifest:
    body = {"template": {"command": ["sleep", "60"]}, **spec}
    return Manifest(
        "default", name, DeviceProcessSetSpec.model_validate(body).to_wire(), kind=SET_KIND
    )


def revisions(state: Path) -> tuple[int, int, int]:
    """(processes, devices, sets) store revisions: any write moves one."""
    from devicefabric.bridge.controlplane.local.store import LocalStore  # noqa: PLC0415

    return (
        LocalStore(state).revision(),
        device_store(state).revision(),
        set_store(state).revision(),
    )


@contextlib.asynccontextmanager
async def devices_up(
    broker: BrokerProcess, secret: bytes, state: Path
) -> AsyncIterator[tuple[LocalControlPlane, LocalFleet, Fleet]]:
    """A bridge over `state` (with its fleet kinds) and the simulated DEVICES, born and beating."""
    plane = LocalControlPlane(state)
    kinds = plane.fleet
    assert kinds is not None
    fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=5)
    try:
        async with running(broker, plane):
            await fleet.connect(DEVICES)
            fleet.beat()
            yield plane, kinds, fleet
    finally:
        await fleet.close()


def owned(plane: LocalControlPlane, name: str = "collector") -> dict[str, str]:
    return {r.name: r.device or "" for r in plane.resources() if r.labels.get(SET_LABEL) == name}


def test_devices_are_created_once_per_birth(
    embedded: BrokerProcess, secret: bytes, tmp_path: Path
) -> None:
    state = tmp_path / "state"

    async def story() -> None:
        async with devices_up(embedded, secret, state) as (_, kinds, fleet):
            await until(lambda: {d.name for d in kinds.devices()} == set(DEVICES))
            creates = device_store(state).revision()
            # the operator deletes d1's Device: it stays deleted while d1 stays connected
            assert device_store(state).delete("d1")
            await until(lambda: kinds.device("d1") is None, what="the deletion seen")
            fleet.beat()
            marker = Manifest("", "marker", {}, kind=DEVICE_KIND)
            device_store(state).apply([marker])  # an operator's write after the heartbeats
            await until(lambda: kinds.device("marker") is not None)
            assert kinds.device("d1") is None
            # d1 reconnects (a new session, a new birth): its Device comes back
            await fleet.reconnect("d1")
            await until(lambda: kinds.device("d1") is not None, what="d1 recreated")
            assert device_store(state).revision() > creates

    asyncio.run(story())


def test_a_name_taken_by_another_process_is_a_conflict_not_an_overwrite(
    embedded: BrokerProcess, secret: bytes, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    store = LocalControlPlane(state).store
    mine = Manifest(
        "default", "collector-d1", {"deviceName": "d1", "command": ["sleep", "7"]}, {"team": "a"}
    )

    async def story() -> None:
        async with devices_up(embedded, secret, state) as (plane, kinds, _):
            await until(lambda: len(list(kinds.devices())) == len(DEVICES))
            set_store(state).apply([set_manifest(selector={})])
            await until(lambda: set(owned(plane).values()) == {"d2", "d3"}, what="d2, d3 owned")

            def conflict() -> bool:
                obj = kinds.process_set("default/collector")
                conds = obj.status.get("conditions") if obj else None
                return isinstance(conds, list) and any(
                    c.get("reason") == "NameConflict" for c in conds
                )

            await until(conflict, what="Progressing=False/NameConflict")

    store.apply([mine])
    before = store.load("default/collector-d1")
    asyncio.run(story())
    after = store.load("default/collector-d1")
    assert before is not None
    assert after is not None
    assert (after.spec, after.labels, after.owners) == (before.spec, before.labels, ())


def test_a_restart_over_settled_state_writes_nothing_and_collects_a_deleted_sets_processes(
    embedded: BrokerProcess, secret: bytes, tmp_path: Path
) -> None:
    state = tmp_path / "state"

    async def story() -> None:
        fleet = Fleet(embedded.host, embedded.port, secret, heartbeat_s=5)
        try:
            await fleet.connect(DEVICES)
            plane = LocalControlPlane(state)
            async with running(embedded, plane) as bridge:
                fleet.beat()
                # simulated devices run nothing: a 1 s deadline ends the wake-ups that wait on it
                quick = {"rollingUpdate": {"progressDeadlineSeconds": 1}}
                set_store(state).apply([set_manifest(selector={}, updateStrategy=quick)])
                await until(lambda: len(owned(plane)) == 3, what="three owned processes")
                for _ in range(2):
                    await until(lambda: bridge.snapshot().queue_depth == 0, what="the bridge idle")
            settled = revisions(state)

            # Restart: everything is as stored; the devices beat on. Not one write.
            plane = LocalControlPlane(state)
            async with running(embedded, plane) as bridge:
                fleet.beat()
                for _ in range(3):
                    await until(lambda: bridge.snapshot().queue_depth == 0, what="the bridge idle")
                fleet.beat()
                await until(lambda: bridge.snapshot().queue_depth == 0, what="the bridge idle")
            assert revisions(state) == settled

            # The set deleted while no bridge runs: the next one deletes what it owned.
            assert set_store(state).delete("default/collector")
            plane = LocalControlPlane(state)
            async with running(embedded, plane):
                await until(lambda: owned(plane) == {}, what="the orphans deleted")
        finally:
            await fleet.close()

    asyncio.run(story())
