"""`/devices`: copied on the loop, rendered off it, paged by name; a bad page is a 400. `/readyz`."""

from __future__ import annotations

import asyncio
import json

import pytest

from devicefabric.bridge.api import MAX_PAGE, BridgeSnapshot, page_views, readyz, render_devices
from devicefabric.bridge.http import HttpServer, Query, Response
from devicefabric.bridge.mirroring import ResourceIndex
from devicefabric.bridge.tracking import DeviceTracker
from devicefabric.config.settings import HostPort
from devicefabric.config.wire import Heartbeat, ProcessReport, Report, StatusOnline

NAMES = ("dev-c", "dev-a", "dev-e", "dev-b", "dev-d")


def tracker_of(names: tuple[str, ...]) -> DeviceTracker:
    tracker = DeviceTracker()
    for i, name in enumerate(names):
        session = f"s{i}"
        tracker.status(
            name, StatusOnline(state="online", session=session, heartbeat_s=15, agent="t"), 1.0
        )
        tracker.heartbeat(name, Heartbeat(session=session, seq=1), 2.0)
        report = Report(
            session=session,
            seq=2,
            revision="r1",
            processes={f"default/{name}": ProcessReport(generation=1, phase="Running")},
        )
        tracker.report(name, report, 2.0)
    return tracker


def names_of(body: bytes) -> list[str]:
    return [doc["device"] for doc in json.loads(body)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"]),
        ({"limit": "2"}, ["dev-a", "dev-b"]),
        ({"limit": "2", "after": "dev-b"}, ["dev-c", "dev-d"]),
        ({"after": "dev-d"}, ["dev-e"]),
        ({"after": "dev-e"}, []),
    ],
)
def test_devices_are_sorted_and_paged_by_name(query: dict[str, str], expected: list[str]) -> None:
    views = page_views(tracker_of(NAMES), ResourceIndex(), 3.0, query)
    response = render_devices(views)
    assert response.status == 200
    assert names_of(response.body) == expected
    # one device per line: readable with curl, and cheap to build
    assert response.body.count(b"\n") == len(expected) + 2


def test_a_device_document_has_what_it_had() -> None:
    (view,) = page_views(tracker_of(("dev-a",)), ResourceIndex(), 3.5, {})
    (doc,) = json.loads(render_devices([view]).body)
    assert doc["state"] == "connected"
    assert doc["session"] == "s0"
    assert doc["lastSeenAgeSeconds"] == 1.5
    assert doc["processes"] == {
        "default/dev-a": {"generation": 1, "phase": "Running", "restarts": 0}
    }
    assert doc["facts"] == {}  # an agent that sent none


def test_a_device_document_has_the_facts_of_the_latest_birth() -> None:
    tracker = tracker_of(("dev-a",))
    birth = StatusOnline(
        state="online",
        session="s0",
        heartbeat_s=15,
        agent="t",
        arch="aarch64",
        cpus=4,
        memory_bytes=2**32,
    )
    tracker.status("dev-a", birth, 3.0)
    (view,) = page_views(tracker, ResourceIndex(), 3.5, {})
    (doc,) = json.loads(render_devices([view]).body)
    assert doc["facts"] == {"arch": "aarch64", "cpus": 4, "memoryBytes": 2**32}
    assert doc["state"] == "connected"


@pytest.mark.parametrize("limit", ["0", "-1", "x", str(MAX_PAGE + 1), "1e3"])
def test_a_bad_limit_is_refused_with_a_400(limit: str) -> None:
    async def story() -> tuple[int, bytes]:
        tracker = tracker_of(NAMES)

        async def devices(query: Query) -> Response:
            views = page_views(tracker, ResourceIndex(), 3.0, query)
            return await asyncio.to_thread(render_devices, views)

        server = HttpServer(HostPort("127.0.0.1", 0), {"/devices": devices})
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            handler = asyncio.ensure_future(server.serve())
            writer.write(f"GET /devices?limit={limit} HTTP/1.1\r\n\r\n".encode())
            async with asyncio.timeout(5):
                raw = await reader.read()
            writer.close()
            handler.cancel()
        finally:
            await server.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body

    code, body = asyncio.run(story())
    assert code == 400
    assert body.startswith(b"limit must be a whole number")


@pytest.mark.parametrize(
    ("leading", "reason", "expected"),
    [
        pytest.param(True, None, None, id="leader"),
        pytest.param(
            False,
            "lease devicefabric-system/devicefabric-bridge is held by bridge-0",
            "held by",
            id="standby-says-who-holds-the-lease",
        ),
        pytest.param(False, None, "not elected", id="standby-not-elected"),
        pytest.param(True, "lease x is held by bridge-0", None, id="leader-hides-a-stale-reason"),
    ],
)
def test_readyz_says_why_a_standby_does_not_lead(
    *, leading: bool, reason: str | None, expected: str | None
) -> None:
    state = BridgeSnapshot(
        mqtt_connected=True,
        mqtt_primed=True,
        session="s",
        synced=True,
        leading=leading,
        queue_depth=0,
        not_leading=reason,
    )
    doc = json.loads(readyz(state).body)
    assert doc["role"] == ("leader" if leading else "standby")
    if expected is None:
        assert "notLeading" not in doc
    else:
        assert expected in doc["notLeading"]
    if reason is not None and not leading:
        assert doc["notLeading"] == reason  # the elector's reason, word for word
