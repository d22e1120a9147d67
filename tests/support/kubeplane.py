"""Helpers for driving `KubeControlPlane` in-process against the fake API server.

`make_plane(...)` writes a kubeconfig for one replica (its bearer token names it in the request
log), and builds the control plane with test-sized timings; `running(plane)` runs it in a task
until the block ends, recording every `on_change` key in a `Changes`; `granted_to_bridge(...)`
checks the whole request log against our shipped RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import yaml

from devicefabric.bridge.controlplane.kube.plane import KubeControlPlane
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.config import deploybundle as manifests
from tests.support.fakeapi import BRIDGE_USER, FakeApiServer, bridge_user
from tests.support.fakeapi.faults import RequestRecord
from tests.support.fakeapi.rbac import Authorizer
from tests.support.waiting import async_wait_for, stop_task

FAST = {
    "lease_duration": 1.5,
    "renew_deadline": 1.0,
    "retry_period": 0.2,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "request_timeout": 2.0,
}


def make_plane(
    api: FakeApiServer, tmp_path: Path, identity: str = "bridge-0", **settings: Any
) -> KubeControlPlane:
    kubeconfig = api.write_kubeconfig(
        tmp_path / f"kubeconfig-{identity}", user=bridge_user(identity)
    )
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        return KubeControlPlane(settings=KubeSettings(identity=identity, **{**FAST, **settings}))
    finally:
        if previous is None:
            del os.environ["KUBECONFIG"]
        else:
            os.environ["KUBECONFIG"] = previous


class Changes:
    """The keys `on_change` was called with, in order."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, key: str) -> None:
        self.keys.append(key)

    def count(self, key: str) -> int:
        return Counter(self.keys)[key]

    async def wait(self, key: str, times: int = 1, timeout: float = 5.0) -> None:
        await async_wait_for(
            lambda: self.count(key) >= times, timeout, what=f"on_change({key}) x{times}"
        )


@contextlib.asynccontextmanager
async def running(
    plane: KubeControlPlane, api: FakeApiServer | None = None, synced: bool = True
) -> AsyncIterator[Changes]:
    """Run `plane` for the block; wait for its sync, and for its watch to be open at `api`."""
    changes = Changes()
    task = asyncio.create_task(plane.run(changes))
    try:
        if synced:
            waiter = asyncio.ensure_future(plane.synced.wait())
            await asyncio.wait([waiter, task], timeout=5, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                task.result()
            assert plane.synced.is_set(), "the control plane did not sync in 5 s"
        if api is not None:
            await async_wait_for(lambda: api.active_watches("deviceprocesses") >= 1, what="a watch")
        yield changes
    finally:
        await stop_task(task)


def denied(records: Iterable[RequestRecord], rbac: str = manifests.RBAC) -> list[RequestRecord]:
    """Requests of any bridge replica that our shipped RBAC (`rbac` file) does not grant."""
    docs = list(yaml.safe_load_all(manifests.read(rbac)))
    authorizer = Authorizer.from_manifests(docs, "devicefabric-system/devicefabric-bridge")
    return [r for r in records if r.user.startswith(BRIDGE_USER) and not authorizer.allows(r.info)]
