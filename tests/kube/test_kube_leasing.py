"""Leader election over a real Lease on the fake: one leader, fast hand-over, never two at once.

Replicas run in-process, each with its own bearer token, so the request log tells their requests
apart and fault injection can silence one of them (a leader cut off from the API server is, to
everyone else, a dead leader). Timings are scaled down: lease 1.5 s, renew deadline 1.0 s, retry
0.2 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devicefabric.bridge.controlplane.kube.plane import KubeControlPlane
from devicefabric.config.errors import ConfigError
from tests.support.fakeapi import FakeApiServer, Match, bridge_user
from tests.support.fakeapi.client import Http
from tests.support.kubeplane import FAST, denied, make_plane, running
from tests.support.waiting import async_wait_for
from tests.support.waiting import run_bounded as run

SLACK = 1.0  # s: request latency and scheduling on a loaded two-core machine
LEASE = "/apis/coordination.k8s.io/v1/namespaces/devicefabric-system/leases/devicefabric-bridge"
LEASE_NAME = "devicefabric-system/devicefabric-bridge"


class Timeline:
    """When each replica's `leading` was set and cleared (monotonic seconds)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str, bool]] = []

    async def follow(self, name: str, plane: KubeControlPlane) -> None:
        state = False
        while True:
            now = plane.leading.is_set()
            if now != state:
                self.marks.append((time.monotonic(), name, now))
                state = now
            await asyncio.sleep(0.005)

    def seen(self) -> set[tuple[str, bool]]:
        return {(name, leading) for _, name, leading in self.marks}

    def overlaps(self) -> bool:
        leaders: set[str] = set()
        for _, name, leading in sorted(self.marks):
            (leaders.add if leading else leaders.discard)(name)
            if len(leaders) > 1:
                return True
        return False


def holder(http: Http) -> str:
    return str(http.get(LEASE).body["spec"]["holderIdentity"])


def test_one_replica_leads_the_other_waits_without_writing(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    a, b = make_plane(api, tmp_path, "a"), make_plane(api, tmp_path, "b")

    async def scenario() -> None:
        async with running(a):
            await asyncio.wait_for(a.leading.wait(), 5)
            async with running(b):
                await async_wait_for(
                    lambda: (
                        api.log.count(Match(verb="get", resource="leases", user=bridge_user("b")))
                        >= 3
                    )
                )
                assert not b.leading.is_set()
                assert holder(http) == "a"
                assert a.not_leading is None
                assert b.not_leading == f"lease {LEASE_NAME} is held by a"
                api.inject(403, 3, user=bridge_user("b"))  # e.g. RBAC not applied yet
                await async_wait_for(
                    lambda: "HTTP 403" in (b.not_leading or ""), what="b saying why"
                )

    run(scenario)
    b_writes = [
        r
        for r in api.log.records(Match(user=bridge_user("b"), resource="leases"))
        if r.info.verb != "get"
    ]
    assert b_writes == []
    a_renewals = api.log.records(Match(verb="update", resource="leases", user=bridge_user("a")))
    assert a_renewals  # the leader renews with PUTs...
    assert (
        api.log.count(Match(verb="get", resource="leases", user=bridge_user("a"))) == 1
    )  # ...no GETs
    assert denied(api.log.records()) == []


def test_graceful_stop_releases_the_lease_and_the_standby_leads_at_once(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    a, b = make_plane(api, tmp_path, "a"), make_plane(api, tmp_path, "b")

    async def scenario() -> None:
        first = running(a)
        await first.__aenter__()
        try:
            await asyncio.wait_for(a.leading.wait(), 5)
        finally:
            async with running(b):
                b_reads = Match(verb="get", resource="leases", user=bridge_user("b"))
                await async_wait_for(lambda: api.log.count(b_reads) >= 2, what="b standing by")
                assert not b.leading.is_set()
                await first.__aexit__(None, None, None)  # SIGTERM: a releases its lease
                stopped = time.monotonic()
                assert holder(http) == ""
                await asyncio.wait_for(b.leading.wait(), 5)
                took = time.monotonic() - stopped
                assert took < FAST["lease_duration"], took  # not waiting the lease out
                assert holder(http) == "b"
                assert http.get(LEASE).body["spec"]["leaseTransitions"] == 1

    run(scenario)


def test_a_cut_off_leader_steps_down_before_the_standby_takes_over(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    a, b = make_plane(api, tmp_path, "a"), make_plane(api, tmp_path, "b")
    timeline = Timeline()

    async def scenario() -> None:
        async with running(a):
            await asyncio.wait_for(a.leading.wait(), 5)
            async with running(b):
                await cut_off_a_and_wait_for_b()

    async def cut_off_a_and_wait_for_b() -> None:
        b_reads = Match(verb="get", resource="leases", user=bridge_user("b"))
        await async_wait_for(lambda: api.log.count(b_reads) >= 1, what="b observing the lease")
        followers = [asyncio.create_task(timeline.follow(n, p)) for n, p in (("a", a), ("b", b))]
        api.inject(503, 100_000, user=bridge_user("a"))  # to everyone else, a is dead
        cut = time.monotonic()
        await asyncio.wait_for(b.leading.wait(), 10)
        took = time.monotonic() - cut
        await async_wait_for(lambda: ("b", True) in timeline.seen(), what="the timeline to see b")
        for follower in followers:
            follower.cancel()
        assert not a.leading.is_set()
        assert took <= FAST["lease_duration"] + 2 * FAST["retry_period"] * 1.2 + SLACK, took
        assert holder(http) == "b"
        api.log.clear_faults()

    run(scenario)
    assert not timeline.overlaps(), timeline.marks
    a_stepped_down = next(t for t, n, leading in timeline.marks if n == "a" and not leading)
    b_took_over = next(t for t, n, leading in timeline.marks if n == "b" and leading)
    assert a_stepped_down < b_took_over


def test_racing_standbys_for_an_expired_lease_elect_exactly_one(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    ghost = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "devicefabric-bridge"},
        "spec": {
            "holderIdentity": "ghost",
            "leaseDurationSeconds": 1,
            "renewTime": "2020-01-01T00:00:00.000000Z",
        },
    }
    assert http.request("POST", LEASE.rsplit("/", 1)[0], ghost).status == 201
    planes = [make_plane(api, tmp_path, name) for name in ("a", "b", "c")]
    timeline = Timeline()

    async def scenario() -> None:
        async with running(planes[0]), running(planes[1]), running(planes[2]):
            followers = [
                asyncio.create_task(timeline.follow(n, p))
                for n, p in zip("abc", planes, strict=True)
            ]
            await async_wait_for(
                lambda: any(p.leading.is_set() for p in planes), 5, what="a leader"
            )
            winner = holder(http)
            marker = api.log.count(Match(resource="leases"))
            await async_wait_for(
                lambda: api.log.count(Match(resource="leases")) >= marker + 12, what="more rounds"
            )
            assert [p.leading.is_set() for p in planes].count(True) == 1
            assert holder(http) == winner
            for follower in followers:
                follower.cancel()

    run(scenario)
    assert not timeline.overlaps(), timeline.marks


def test_a_missing_lease_namespace_is_a_configuration_error_at_once(
    api: FakeApiServer, tmp_path: Path
) -> None:
    api.namespaces = {"default"}
    plane = make_plane(api, tmp_path, "a")

    async def scenario() -> None:
        with pytest.raises(ConfigError) as raised:
            await asyncio.wait_for(plane.run(lambda _key: None), 5)
        message = str(raised.value)
        assert "'devicefabric-system' does not exist" in message
        assert "--lease-namespace" in message

    run(scenario)
    assert api.log.count(Match(verb="create", resource="leases")) == 1  # no retrying
    assert not plane.leading.is_set()
