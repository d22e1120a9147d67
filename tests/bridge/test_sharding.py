"""Tier 1: shard ownership, table-driven (device -> shard, fair shares, the Lease clock, tenure)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from devicefabric.bridge.sharding import (
    Decision,
    LeaseClock,
    Tenure,
    collectable,
    decide,
    fair_share,
    member_lease,
    preference,
    shard_lease,
    shard_of,
)

# Pinned values: SHA-256 is the same on every machine and Python version, so these never change.
# A change here moves devices between shards in a running fleet: it is a breaking change.
PINNED = [
    ("dev-0", (0, 1, 2, 3, 15)),
    ("dev-1", (0, 0, 0, 2, 2)),
    ("pump-7", (0, 1, 0, 1, 9)),
    ("a", (0, 0, 1, 2, 10)),
    ("gw-eu-042", (0, 1, 1, 3, 15)),
]


@pytest.mark.parametrize(("device", "expected"), PINNED)
def test_shard_of_is_pinned(device: str, expected: tuple[int, ...]) -> None:
    assert tuple(shard_of(device, n) for n in (1, 2, 3, 4, 16)) == expected


def test_shard_of_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from devicefabric.bridge.sharding import shard_of;"
        "print([shard_of(f'dev-{i}', 7) for i in range(50)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout
    assert out.strip() == str([shard_of(f"dev-{i}", 7) for i in range(50)])


@pytest.mark.parametrize(("shards", "devices", "bound"), [(3, 3000, 0.10), (16, 16000, 0.12)])
def test_shards_are_balanced_within_a_bound(shards: int, devices: int, bound: float) -> None:
    counts = Counter(shard_of(f"device-{i}", shards) for i in range(devices))
    mean = devices / shards
    assert len(counts) == shards
    assert max(abs(c - mean) / mean for c in counts.values()) < bound


def test_bad_shard_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_of("dev", 0)


def test_lease_names_are_valid_object_names_whatever_the_identity() -> None:
    assert shard_lease("devicefabric-bridge", 3) == "devicefabric-bridge-3"
    name = member_lease("devicefabric-bridge", "host_1234 with spaces/and slashes")
    assert name.startswith("devicefabric-bridge-member-")
    assert name.replace("-", "").isalnum()
    assert name.islower()
    assert member_lease("b", "x") != member_lease("b", "y")


@pytest.mark.parametrize(
    ("shards", "replicas", "share"), [(30, 1, 30), (30, 2, 15), (30, 3, 10), (30, 4, 8), (3, 5, 1)]
)
def test_fair_share_is_the_ceiling(shards: int, replicas: int, share: int) -> None:
    assert fair_share(shards, replicas) == share


def test_preference_differs_between_replicas_and_is_a_permutation() -> None:
    a, b = preference("a", range(12)), preference("b", range(12))
    assert sorted(a) == sorted(b) == list(range(12))
    assert a != b


def held(**owners: list[int]) -> dict[int, str]:
    return {k: who for who, ks in owners.items() for k in ks}


@pytest.mark.parametrize(
    ("case", "holders", "members", "acquire", "release"),
    [
        # a lone replica takes everything
        ("alone", {}, set(), 6, 0),
        # three live, nothing held yet: two each
        ("three fresh", {}, {"b", "c"}, 2, 0),
        # at share: nothing to do
        ("at share", held(me=[0, 1], b=[2, 3], c=[4, 5]), set(), 0, 0),
        # a fourth replica joined (member only): 6 / 4 -> share 2, nobody is over: nothing
        ("joiner, nobody over", held(me=[0, 1], b=[2, 3], c=[4, 5]), {"d"}, 0, 0),
        # a replica over its share gives up the extras once another has room
        ("over share", held(me=[0, 1, 2, 3], b=[4, 5]), {"c"}, 0, 2),
        # ...but not when nobody could take them
        ("over, nobody has room", held(me=[0, 1, 2, 3], b=[4, 5]), set(), 0, 1),
        # a dead replica's shards expired (absent): the survivors split them within share
        ("dead replica", held(me=[0, 1], b=[2, 3]), set(), 1, 0),
        # a free shard another replica has room for is left to it (c holds 1 of its 2)
        ("left to c", held(me=[0, 1], b=[2, 3], c=[4]), set(), 0, 0),
    ],
)
def test_decide(
    case: str, holders: dict[int, str], members: set[str], acquire: int, release: int
) -> None:
    decision = decide("me", 6, holders, members)
    assert (len(decision.acquire), len(decision.release)) == (acquire, release), case
    assert all(k not in holders for k in decision.acquire)
    assert all(holders.get(k) == "me" for k in decision.release)


def test_over_share_with_two_over_releases_down_to_share() -> None:
    # 3 live (c joined), me holds 4 of 6: share 2, two released
    decision = decide("me", 6, held(me=[0, 1, 2, 3], b=[4, 5]), {"c"})
    assert len(decision.release) == 2
    assert decision == Decision(acquire=(), release=decision.release)


def test_rounds_converge_to_a_fair_split_from_any_start() -> None:
    """Simulated rounds (no races): every shard held once, each replica within its share."""
    holders: dict[int, str] = dict.fromkeys(range(30), "a")  # a held everything alone
    replicas = ["a", "b", "c", "d"]
    for _ in range(6):
        for me in replicas:
            decision = decide(me, 30, holders, set(replicas))
            for k in decision.release:
                del holders[k]
            for k in decision.acquire:
                holders.setdefault(k, me)
    counts = Counter(holders.values())
    assert len(holders) == 30
    assert set(counts) == set(replicas)
    assert max(counts.values()) <= fair_share(30, 4) == 8  # the last to come gets the rest: 6


def lease(holder: str, renew: str = "t1", duration: int = 10) -> dict[str, object]:
    return {
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew}
    }


def test_lease_clock_expires_by_our_clock_from_the_last_change() -> None:
    clock = LeaseClock()
    clock.observe("l", lease("b"), now=100.0)
    assert clock.holder("l", 109.9) == "b"
    clock.observe("l", lease("b"), now=105.0)  # the same record seen again: no renewal
    assert clock.holder("l", 110.0) is None
    clock.observe("l", lease("b", renew="t2"), now=111.0)  # renewed
    assert clock.holder("l", 120.9) == "b"
    clock.observe("l", lease(""), now=121.0)  # released
    assert clock.holder("l", 121.0) is None
    assert clock.holder("unknown", 0.0) is None


def test_tenure_stops_writing_at_the_renew_deadline_and_on_drop() -> None:
    tenure = Tenure(renew_deadline=4.0)
    tenure.renewed(2, sent_at=10.0)
    assert tenure.may_write(2, 13.9)
    assert not tenure.may_write(2, 14.0)
    assert not tenure.may_write(1, 10.0)
    assert tenure.lapsed(14.0) == [2]
    tenure.renewed(2, sent_at=13.0)
    assert tenure.lapsed(14.0) == []
    tenure.drop(2)
    assert not tenure.may_write(2, 13.5)
    assert tenure.held() == []


def test_collectable_left_behind_leases_oldest_first_within_the_limit() -> None:
    clock = LeaseClock()
    clock.observe("held", lease("x"), now=0.0)  # renewed below: its replica is alive
    clock.observe("released", lease(""), now=0.0)  # a clean stop that could not delete
    clock.observe("expired", lease("y", duration=2), now=1.0)  # a killed replica
    clock.observe("recent", lease(""), now=8.0)  # released a moment ago
    clock.observe("held", lease("x", renew="t9"), now=9.0)
    names = ["held", "released", "expired", "recent", "unknown"]
    assert collectable(clock, names, now=10.0, after=5.0, limit=10) == ["released", "expired"]
    assert collectable(clock, names, now=10.0, after=5.0, limit=1) == ["released"]
    assert collectable(clock, names, now=10.0, after=20.0, limit=10) == []


def test_a_lease_counts_as_renewed_only_once_it_changed_after_we_first_saw_it() -> None:
    clock = LeaseClock()
    clock.observe("dead", lease("x"), now=0.0)  # a killed replica's Lease, first seen now
    clock.observe("alive", lease("y"), now=0.0)
    clock.observe("dead", lease("x"), now=0.5)
    clock.observe("alive", lease("y", renew="t2"), now=0.5)
    assert clock.holder("dead", 1.0) == "x"  # valid for holding (safety first)...
    assert not clock.renewed_since_seen("dead")  # ...but not seen alive
    assert clock.renewed_since_seen("alive")
    clock.forget("alive")
    assert not clock.renewed_since_seen("alive")
