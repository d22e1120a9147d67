"""The Kubernetes control plane against the fake API server: informer, writes, errors, RBAC.

Each test runs the real `KubeControlPlane` (official client, real HTTP) in-process and acts on the
fake as a user would (creating, changing, deleting resources) or as the network would (dropped
watches, compacted history, error answers). Every test ends by checking that each request the
control plane made is granted by our shipped RBAC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devicefabric.bridge.controlplane.kube.plane import REPORTING_CONTROLLER, KubeControlPlane
from devicefabric.bridge.errors import (
    ConflictError,
    ControlPlaneError,
    NotFoundError,
    TransientError,
)
from devicefabric.config import deploybundle as manifests
from tests.support.fakeapi import FakeApiServer, Match, bridge_user
from tests.support.fakeapi.client import Http, device_process, dp_path
from tests.support.kubeplane import denied, make_plane, running
from tests.support.waiting import async_wait_for, stop_task
from tests.support.waiting import run_bounded as run

BRIDGE = bridge_user("bridge-0")


@pytest.fixture(autouse=True)
def rbac_granted(api: FakeApiServer) -> Iterator[None]:
    """After each test: every request the control plane made is granted by rbac.yaml."""
    yield
    assert denied(api.log.records()) == []


@pytest.fixture
def plane(api: FakeApiServer, http: Http, tmp_path: Path) -> KubeControlPlane:
    """The control plane under test, over a fake API server that holds DeviceProcess p1."""
    http.create(device_process("p1"))
    return make_plane(api, tmp_path)


async def both_writes_raise(plane: KubeControlPlane, error: type[Exception]) -> Exception:
    """A status patch and an event for p1 both raise `error`; returns the patch's exception."""
    with pytest.raises(error) as caught:
        await plane.patch_status("default/p1", {"phase": "Running"})
    with pytest.raises(error):
        await plane.emit_event("default/p1", "Normal", "Connected", "m")
    return caught.value


def rv_of(http: Http, name: str) -> str:
    return str(http.get(dp_path(name=name)).body["metadata"]["resourceVersion"])


def test_lists_then_watches_and_reports_each_change_once(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    http.create(device_process("p1"))
    http.create(device_process("p2"), namespace="other")
    listed_at = str(api.store.resource_version)
    api.inject(500, 1000, resource="leases")  # no lease writes: the store stays at `listed_at`
    plane = make_plane(api, tmp_path)

    async def scenario() -> None:
        async with running(plane, api) as changes:
            assert sorted(changes.keys) == ["default/p1", "other/p2"]
            assert {r.key for r in plane.resources()} == {"default/p1", "other/p2"}
            http.create(device_process("p3"))
            await changes.wait("default/p3")
            http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})
            await changes.wait("default/p1", 2)
            p1 = plane.get("default/p1")
            assert p1 is not None
            assert (p1.spec["suspend"], p1.generation) == (True, 2)
            http.request("DELETE", dp_path(name="p3"))
            await changes.wait("default/p3", 2)
            assert plane.get("default/p3") is None
            assert changes.keys == [
                "default/p1",
                "other/p2",
                "default/p3",
                "default/p1",
                "default/p3",
            ]
            assert (plane.relists, plane.watches) == (1, 1)

    run(scenario)
    watch = api.log.records(Match(verb="watch", user=BRIDGE))[0]
    assert watch.info.param("allowWatchBookmarks") == "true"
    assert watch.info.param("resourceVersion") == listed_at


def test_status_patch_is_a_merge_patch_to_status_and_is_adopted(
    api: FakeApiServer, http: Http, plane: KubeControlPlane
) -> None:
    async def scenario() -> None:
        async with running(plane, api) as changes:
            await plane.patch_status("default/p1", {"phase": "Running", "pid": 42})
            cached = plane.get("default/p1")
            assert cached is not None
            assert cached.status == {"phase": "Running", "pid": 42}  # adopted from the answer
            assert cached.resource_version == rv_of(http, "p1")
            await plane.patch_status("default/p1", {"pid": None})
            stored = http.get(dp_path(name="p1")).body
            assert stored["status"] == {"phase": "Running"}
            assert stored["metadata"]["generation"] == 1
            http.create(device_process("marker"))  # a positive marker after our own echoes
            await changes.wait("default/marker")
            assert changes.count("default/p1") <= 3  # the list, and at most an echo per write

    run(scenario)
    patches = api.log.records(Match(verb="patch", user=BRIDGE))
    assert [(p.info.resource_path, p.content_type, p.status) for p in patches] == [
        ("deviceprocesses/status", "application/merge-patch+json", 200)
    ] * 2


def test_dropped_watch_resumes_from_the_last_revision_without_a_relist(
    api: FakeApiServer, http: Http, plane: KubeControlPlane
) -> None:
    async def scenario() -> None:
        async with running(plane, api) as changes:
            http.create(device_process("p2"))
            await changes.wait("default/p2")
            seen = rv_of(http, "p2")
            api.inject(503, 1000, verb="watch")  # hold the reconnect while we change things
            assert api.drop_watches() == 1
            await async_wait_for(lambda: api.log.count(Match(verb="watch"), injected=True) >= 1)
            http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})  # missed by no one
            changed = int(rv_of(http, "p1"))
            api.log.clear_faults()
            await changes.wait("default/p1", 2)
            assert plane.relists == 1
            resumed = [r for r in api.log.records(Match(verb="watch")) if r.status == 200][-1]
            assert int(seen) <= int(resumed.info.param("resourceVersion") or 0) < changed
            assert (changes.count("default/p1"), changes.count("default/p2")) == (2, 1)

    run(scenario)


def test_expired_history_relists_and_notifies_only_what_changed(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        http.create(device_process(name))
    plane = make_plane(api, tmp_path)

    async def scenario() -> None:
        async with running(plane, api) as changes:
            before = list(changes.keys)
            api.inject(503, 1000, verb="watch")
            api.drop_watches()
            await async_wait_for(lambda: api.log.count(Match(verb="watch"), injected=True) >= 1)
            http.merge(dp_path(name="a"), {"spec": {"suspend": True}})
            http.request("DELETE", dp_path(name="b"))
            http.create(device_process("d"))
            api.compact()
            api.log.clear_faults()
            await async_wait_for(lambda: plane.relists == 2, what="a re-list after 410")
            assert sorted(changes.keys[len(before) :]) == ["default/a", "default/b", "default/d"]
            assert plane.get("default/b") is None
            a = plane.get("default/a")
            assert a is not None
            assert a.spec["suspend"] is True
            http.create(device_process("e"))  # and the watch goes on from the new list
            await changes.wait("default/e")
            assert changes.count("default/c") == 1

    run(scenario)
    expired = [r for r in api.log.records(Match(verb="watch")) if not r.injected]
    assert len(expired) >= 3  # first watch, the one answered 410, the one after the re-list


@pytest.mark.parametrize(
    "case",
    [
        (409, ConflictError, None),
        (404, NotFoundError, None),
        (429, TransientError, 7.0),
        (500, TransientError, None),
        (503, TransientError, 2.0),
        (403, ControlPlaneError, None),
    ],
)
def test_write_errors_map_onto_the_bridge_hierarchy(
    api: FakeApiServer, plane: KubeControlPlane, case: tuple[int, type[Exception], float | None]
) -> None:
    status, error, retry_after = case

    async def scenario() -> None:
        async with running(plane, api):
            api.inject(
                status, 1, retry_after=int(retry_after) if retry_after else None, verb="patch"
            )
            api.inject(status, 1, verb="create", resource="events")
            caught = await both_writes_raise(plane, error)
            assert type(caught) is error
            if isinstance(caught, TransientError):
                assert caught.retry_after == retry_after

    run(scenario)


def test_conflict_rereads_the_resource_into_the_cache(
    api: FakeApiServer, http: Http, plane: KubeControlPlane
) -> None:
    async def scenario() -> None:
        async with running(plane, api):
            api.inject(503, 1000, verb="watch")
            api.drop_watches()  # the cache cannot learn of the next change from the watch
            await async_wait_for(lambda: api.log.count(Match(verb="watch"), injected=True) >= 1)
            http.merge(dp_path(name="p1", subresource="status"), {"status": {"phase": "Failed"}})
            api.inject(409, 1, verb="patch")
            with pytest.raises(ConflictError):
                await plane.patch_status("default/p1", {"phase": "Running"})
            cached = plane.get("default/p1")
            assert cached is not None
            assert cached.status == {"phase": "Failed"}
            api.log.clear_faults()

    run(scenario)
    assert api.log.count(Match(verb="get", resource="deviceprocesses", user=BRIDGE)) == 1


def test_events_name_the_bridge_as_reporting_controller(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    http.create(device_process("p1"))
    plane = make_plane(api, tmp_path, identity="bridge-7f9c")

    async def scenario() -> None:
        async with running(plane, api):
            await plane.emit_event("default/p1", "Warning", "ConnectionLost", "lost")

    run(scenario)
    (event,) = http.get("/apis/events.k8s.io/v1/namespaces/default/events").body["items"]
    uid = http.get(dp_path(name="p1")).body["metadata"]["uid"]
    assert (event["reportingController"], event["reportingInstance"]) == (
        REPORTING_CONTROLLER,
        "bridge-7f9c",
    )
    assert (event["type"], event["reason"], event["note"]) == ("Warning", "ConnectionLost", "lost")
    assert event["regarding"]["uid"] == uid
    assert event["metadata"]["name"].startswith("p1.")


def test_namespace_restricts_list_and_watch(api: FakeApiServer, http: Http, tmp_path: Path) -> None:
    http.create(device_process("mine"), namespace="devicefabric-system")
    http.create(device_process("theirs"))
    plane = make_plane(
        api, tmp_path, namespace="devicefabric-system", lease_namespace="devicefabric-system"
    )

    async def scenario() -> None:
        async with running(plane, api) as changes:
            http.create(device_process("theirs-2"))
            http.create(device_process("mine-2"), namespace="devicefabric-system")
            await changes.wait("devicefabric-system/mine-2")
            assert sorted(changes.keys) == [
                "devicefabric-system/mine",
                "devicefabric-system/mine-2",
            ]

    run(scenario)
    reads = api.log.records(Match(resource="deviceprocesses", user=BRIDGE))
    assert reads
    assert {r.info.namespace for r in reads} == {"devicefabric-system"}
    assert denied(api.log.records(), manifests.RBAC_NAMESPACED) == []


def test_unreachable_api_server_is_transient(api: FakeApiServer, tmp_path: Path) -> None:
    plane = make_plane(api, tmp_path)
    api.stop()

    async def scenario() -> None:
        await both_writes_raise(plane, TransientError)

    run(scenario)


def test_bookmarks_move_the_resume_point_past_other_kinds(
    api: FakeApiServer, http: Http, plane: KubeControlPlane
) -> None:
    lease: dict[str, Any] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "unrelated"},
        "spec": {},
    }

    async def scenario() -> None:
        async with running(plane, api):
            assert (
                http.request(
                    "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", lease
                ).status
                == 201
            )
            target = api.store.resource_version
            await async_wait_for(
                lambda: int(plane.resource_version or 0) >= target,
                what="a bookmark at or past the new revision",
            )

    run(scenario)


def test_the_list_is_paged(api: FakeApiServer, http: Http, tmp_path: Path) -> None:
    for index in range(5):
        http.create(device_process(f"p{index}"))
    plane = make_plane(api, tmp_path, page_size=2)

    async def scenario() -> None:
        async with running(plane, api) as changes:
            assert sorted(changes.keys) == [f"default/p{i}" for i in range(5)]

    run(scenario)
    pages = api.log.records(Match(verb="list", user=BRIDGE))
    assert [p.info.param("limit") for p in pages] == ["2", "2", "2"]
    assert [bool(p.info.param("continue")) for p in pages] == [False, True, True]


def test_without_the_fleet_crds_the_fleet_never_syncs_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cluster upgraded without the new CRDs: Devices and sets are not served (404). The
    fleet informers back off and keep asking, the bridge stays not ready, and the log names
    the fix; the DeviceProcess informer is not held up."""
    import yaml  # noqa: PLC0415

    (process_crd,) = [d for d in yaml.safe_load_all(manifests.read(manifests.CRD)) if d][:1]
    with FakeApiServer([process_crd]) as api:
        plane = make_plane(api, tmp_path)

        async def story() -> None:
            fleet_task = asyncio.create_task(plane.fleet.run_fleet(lambda _kind, _key: None))
            try:
                async with running(plane, api):
                    await async_wait_for(
                        lambda: "are not served" in caplog.text, 5, what="the warning"
                    )
                    assert plane.synced.is_set()
                    assert not plane.fleet.fleet_synced.is_set()
            finally:
                await stop_task(fleet_task)

        with caplog.at_level("WARNING", logger="devicefabric.bridge.kube"):
            asyncio.run(story())
    assert "devicefabric manifests | kubectl apply -f -" in caplog.text
