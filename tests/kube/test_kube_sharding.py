"""Shard Leases over the fake (`--shards N`): fair shares, hand-over on stop, never two writers.

Replicas run in-process (`make_plane(..., shards=4)`), each with its own bearer token, so the
request log tells them apart and fault injection can cut one off. Every replica's `may_write` is
sampled on the one event loop (one clock), so "two replicas may write one device at the same
moment" is checked directly, not inferred. Timings: lease 1.5 s (2 s in the Lease), renew
deadline 1.0 s, retry 0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devicefabric.bridge.controlplane.kube.plane import KubeControlPlane
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.controlplane.kube.sharding import ShardElector
from devicefabric.bridge.errors import TransientError
from devicefabric.bridge.sharding import member_lease, shard_of
from devicefabric.config.errors import ConfigError
from tests.support.fakeapi import FakeApiServer, Match, bridge_user
from tests.support.fakeapi.client import LEASES, Http
from tests.support.kubeplane import FAST, denied, make_plane, running
from tests.support.waiting import async_wait_for, run_bounded

SHARDS = 4
# One device per shard, found by the pure function itself.
DEVICE_OF = {shard_of(f"dev-{i}", SHARDS): f"dev-{i}" for i in range(40)}
SLACK = 1.0


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 30.0) -> None:
    run_bounded(scenario, timeout)


def holders(http: Http) -> dict[int, str]:
    items = http.get(LEASES).body.get("items") or []
    return {
        int(name.rsplit("-", 1)[1]): str(i["spec"].get("holderIdentity") or "")
        for i in items
        if (name := i["metadata"]["name"]).rsplit("-", 1)[1].isdigit()
    }


def members(http: Http) -> set[str]:
    """Holders of the membership Leases that exist (released ones: "")."""
    items = http.get(LEASES).body.get("items") or []
    return {
        str(i["spec"].get("holderIdentity") or "")
        for i in items
        if "-member-" in i["metadata"]["name"]
    }


def counts(planes: dict[str, KubeControlPlane]) -> dict[str, int]:
    return {
        name: sum(plane.may_write(DEVICE_OF[k]) for k in range(SHARDS))
        for name, plane in planes.items()
    }


class Writers:
    """Samples every replica's `may_write` for one device per shard; records any overlap."""

    def __init__(self, planes: dict[str, KubeControlPlane]) -> None:
        self.planes = planes
        self.overlaps: list[tuple[int, list[str]]] = []
        self.samples = 0

    async def follow(self) -> None:
        while True:
            for shard, device in DEVICE_OF.items():
                writing = [n for n, p in self.planes.items() if p.may_write(device)]
                if len(writing) > 1:
                    self.overlaps.append((shard, writing))
            self.samples += 1
            await asyncio.sleep(0.002)

    def assert_never_overlapped(self) -> None:
        """Enough samples were taken, and no shard ever had two writers."""
        assert self.samples > 100
        assert self.overlaps == []


@pytest.fixture
def writers(api: FakeApiServer, tmp_path: Path) -> Writers:
    """Replicas "a" and "b" (not yet running) over the same fake API server, sampled together."""
    return Writers({name: make_plane(api, tmp_path, name, shards=SHARDS) for name in "ab"})


def test_two_replicas_split_the_shards_and_a_stopped_one_hands_over_at_once(
    api: FakeApiServer, http: Http, writers: Writers
) -> None:
    a, b = writers.planes["a"], writers.planes["b"]

    async def scenario() -> None:
        follower = asyncio.create_task(writers.follow())
        first = running(a)
        await first.__aenter__()
        try:
            await async_wait_for(lambda: counts({"a": a})["a"] == SHARDS, 5, what="a alone: all")
            async with running(b):
                await async_wait_for(
                    lambda: counts(writers.planes) == {"a": 2, "b": 2}, 10, what="2 and 2"
                )
                assert set(holders(http).values()) == {"a", "b"}
                assert a.not_leading is None
                await first.__aexit__(None, None, None)  # SIGTERM: a releases its shards
                stopped = time.monotonic()
                assert set(holders(http).values()) == {"", "b"}
                await async_wait_for(lambda: counts({"b": b})["b"] == SHARDS, 5, what="b: all")
                took = time.monotonic() - stopped
                assert took < FAST["lease_duration"], took  # released: no waiting the lease out
                assert set(holders(http).values()) == {"b"}
                assert members(http) == {"b"}  # a deleted its membership Lease on the way out
        finally:
            await first.__aexit__(None, None, None)
            follower.cancel()

    run(scenario)
    writers.assert_never_overlapped()
    assert denied(api.log.records()) == []


def test_a_cut_off_replica_stops_writing_before_its_shards_are_taken(
    api: FakeApiServer, http: Http, writers: Writers
) -> None:
    a, b = writers.planes["a"], writers.planes["b"]

    async def scenario() -> None:
        async with running(a), running(b):
            await async_wait_for(lambda: counts(writers.planes) == {"a": 2, "b": 2}, 10, what="2+2")
            follower = asyncio.create_task(writers.follow())
            api.inject(503, 100_000, user=bridge_user("a"))  # to everyone else, a is dead
            cut = time.monotonic()
            await async_wait_for(lambda: counts({"b": b})["b"] == SHARDS, 10, what="b: all")
            took = time.monotonic() - cut
            follower.cancel()
            assert counts({"a": a})["a"] == 0
            assert not a.leading.is_set()
            assert "HTTP 503" in (a.not_leading or "")
            bound = FAST["lease_duration"] + 0.5 + 3 * FAST["retry_period"] * 1.2 + SLACK
            assert took <= bound, took  # lease 2 s in the Lease (1.5 rounded), a few rounds
            api.log.clear_faults()

    run(scenario)
    writers.assert_never_overlapped()


def lone_replica(api: FakeApiServer, tmp_path: Path) -> tuple[KubeControlPlane, ShardElector]:
    """Replica "a", sharded, with its shard elector."""
    a = make_plane(api, tmp_path, "a", shards=SHARDS)
    assert a.shard_elector is not None
    return a, a.shard_elector


async def holding_every_shard(a: KubeControlPlane) -> asyncio.Task[None]:
    """Start `a` alone; return its task once it holds every shard."""
    task = asyncio.create_task(a.run(lambda _key: None))
    await async_wait_for(lambda: counts({"a": a})["a"] == SHARDS, 5, what="a: all")
    return task


def test_a_release_waits_for_the_writes_under_way(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    a, elector = lone_replica(api, tmp_path)
    device = DEVICE_OF[0]
    # No valid device name (an InvalidSpec resource), however spelled: shard 0, for the writer's
    # check (`device_of`: None) and the write gate (the raw `spec.deviceName`) alike.
    assert elector.shard(None) == elector.shard("") == elector.shard("Not_A_Device") == 0
    releases = Match(verb="update", resource="leases", name="devicefabric-bridge-0")

    async def scenario() -> None:
        task = await holding_every_shard(a)
        with elector.writing(device):  # a status PATCH under way
            marker = api.log.count(releases)
            task.cancel()  # SIGTERM
            await async_wait_for(lambda: not a.may_write(device), 1, what="a stopping writes")
            with pytest.raises(TransientError, match="not held"), elector.writing(device):
                pass  # a new write is refused at once...
            await asyncio.sleep(0.05)
            assert api.log.count(releases) == marker  # ...but the Lease is not given up yet
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert holders(http) == dict.fromkeys(range(SHARDS), "")

    run(scenario)


def test_a_hung_write_leaves_its_shard_to_expire_instead_of_releasing_it(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    a, elector = lone_replica(api, tmp_path)

    async def scenario() -> None:
        task = await holding_every_shard(a)
        with elector.writing(DEVICE_OF[0]):  # never finishes while a stops
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a retry period later, without releasing shard 0
        assert holders(http) == {0: "a", 1: "", 2: "", 3: ""}  # shard 0 expires instead

    run(scenario)


def test_shards_are_a_setting_checked_at_once() -> None:
    assert KubeSettings(identity="x").shards == 1  # default: today's single Lease
    with pytest.raises(ConfigError, match=r"SHARDS must be 1\.\.1024, got 0"):
        KubeSettings(identity="x", shards=0)
    with pytest.raises(ConfigError, match="SHARDS"):
        KubeSettings(identity="x", shards=5000)


def test_shards_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICEFABRIC_SHARDS", "8")
    assert KubeSettings.from_env("ns", identity="x").shards == 8
    monkeypatch.setenv("DEVICEFABRIC_SHARDS", "2.5")
    with pytest.raises(ConfigError, match=r"DEVICEFABRIC_SHARDS: expected an integer, got '2\.5'"):
        KubeSettings.from_env("ns", identity="x")


def test_a_replica_with_another_shard_count_writes_nothing_and_says_why(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    """Shard k of --shards 4 and of --shards 3 name other devices: the newcomer must hold none."""
    a = make_plane(api, tmp_path, "a", shards=SHARDS)
    b = make_plane(api, tmp_path, "b", shards=SHARDS - 1)

    async def scenario() -> None:
        async with running(a):
            await async_wait_for(lambda: counts({"a": a})["a"] == SHARDS, 5, what="a: all")
            async with running(b):
                await async_wait_for(
                    lambda: "every replica must use the same" in (b.not_leading or ""),
                    5,
                    what="b refusing",
                )
                rounds = Match(verb="list", resource="leases", user=bridge_user("b"))
                marker = api.log.count(rounds)
                await async_wait_for(lambda: api.log.count(rounds) >= marker + 3, what="rounds")
                assert not b.leading.is_set()
                assert not any(b.may_write(f"dev-{i}") for i in range(40))
                assert counts({"a": a})["a"] == SHARDS  # the established replica keeps writing
                assert "--shards 4, this replica has --shards 3" in (b.not_leading or "")

    run(scenario)
    b_claims = [
        r
        for r in api.log.records(Match(resource="leases", user=bridge_user("b")))
        if r.info.verb in ("create", "update")
        and "-member-" not in str(r.info.name or "")
        and "-member-" not in (r.json() or {}).get("metadata", {}).get("name", "")
    ]
    assert b_claims == []


def test_the_membership_lease_of_a_replica_that_is_gone_is_deleted_and_comes_back_with_it(
    api: FakeApiServer, http: Http, tmp_path: Path
) -> None:
    quick = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.2}
    a = make_plane(api, tmp_path, "a", shards=SHARDS, **quick)
    b = make_plane(api, tmp_path, "b", shards=SHARDS, **quick)
    deletes = Match(verb="delete", name=member_lease("devicefabric-bridge", "a"))

    async def scenario() -> None:
        async with running(a), running(b):
            await async_wait_for(lambda: members(http) == {"a", "b"}, 10, what="two members")
            api.inject(503, 100_000, user=bridge_user("a"))  # a is gone, to everyone else
            cut = time.monotonic()
            await async_wait_for(lambda: members(http) == {"b"}, 15, what="a's Lease deleted")
            took = time.monotonic() - cut
            assert took >= 5 * quick["lease_duration"], took  # GC_AFTER lease durations idle
            (deleted,) = api.log.records(deletes)
            assert deleted.user == bridge_user("b")
            assert (deleted.json() or {}).get("preconditions", {}).get("resourceVersion")
            api.log.clear_faults()  # a is back: it creates its membership again, takes a share
            await async_wait_for(lambda: members(http) == {"a", "b"}, 10, what="a back")
            await async_wait_for(lambda: counts({"a": a, "b": b}) == {"a": 2, "b": 2}, 10)

    run(scenario)
    assert api.log.count(deletes) == 2  # collected by b, then deleted by a itself on its way out
    assert denied(api.log.records()) == []
