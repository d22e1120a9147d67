"""The sharded bridge on Kubernetes: N replicas all write, each only for the devices of its shards.

Real bridge processes (`bridge run --shards 12`, each with its own bearer token, so the fake's
request log names the writer of every request), a real mosquitto, 30 simulated devices (raw MQTT
connections with their retained births and wills, `tests/support/devices.py`), the fake API server
over HTTP. Timings are scaled down (lease 2 s, renew deadline 1.5 s, retry 0.25 s).

What is checked, from the request log the way an audit log would show it:
- every status PATCH and Event POST of a device was sent by the replica whose Lease on the
  device's shard was, at that moment, the last one written (`holders_at`): never two writers;
- killing a replica (SIGKILL: no release) moves its shards to the others within the lease
  duration plus a few retry periods; starting another makes it take a fair share;
- a handover writes nothing for devices whose state did not change: after each, a device is made
  to change (a marker the new holder must write), after which the counts are final.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from devicefabric.bridge.sharding import shard_of
from devicefabric.config.topics import Topics
from tests.support.devices import Fleet
from tests.support.fabric import Fabric, audited
from tests.support.fakeapi.client import LEASES
from tests.support.fakeapi.faults import RequestRecord
from tests.support.mqtt import connect
from tests.support.resources import condition
from tests.support.waiting import async_wait_for

TOPICS: Final = Topics()
SHARDS: Final = 12
DEVICES: Final = tuple(f"shd-{i:02d}" for i in range(30))
LEASE_DURATION: Final = 2.0
RETRY: Final = 0.25
ENV: Final = {
    "DEVICEFABRIC_SHARDS": str(SHARDS),
    "DEVICEFABRIC_LEASE_DURATION": str(LEASE_DURATION),
    "DEVICEFABRIC_RENEW_DEADLINE": "1.5",
    "DEVICEFABRIC_RETRY_PERIOD": str(RETRY),
}
SLACK: Final = 2.0  # s: process scheduling on a loaded two-core machine
LEASE_PREFIX: Final = "devicefabric-bridge-"


@pytest.fixture
def fabric(tmp_path: Path, secret: bytes) -> Iterator[Fabric]:
    with audited(tmp_path, secret, DEVICES) as fab:
        yield fab


def pod_of(record: RequestRecord) -> str:
    return record.user.rpartition("#")[2]


def device_writes(fabric: Fabric, since: float = 0.0) -> list[tuple[RequestRecord, str]]:
    """(request, device) of every status PATCH and Event POST by a bridge after `since`."""
    found = []
    for r in fabric.api.log.records():
        if not r.user.startswith("system:serviceaccount") or r.monotonic < since or r.status >= 300:
            continue
        if r.info.verb == "patch" and r.info.resource == "devices":
            found.append((r, str(r.info.name)))  # a Device: its shard is its own name's
        elif r.info.verb == "patch" and r.info.subresource == "status":
            found.append((r, device_of_resource(str(r.info.name))))
        elif r.info.verb == "create" and r.info.resource == "events":
            doc = r.json() or {}
            found.append((r, device_of_resource(doc["regarding"]["name"])))
    return found


def device_of_resource(name: str) -> str:
    return name.removesuffix("-job")


def lease_writes(fabric: Fabric) -> dict[int, list[tuple[float, str]]]:
    """shard -> [(when, holder after)] of every successful write of its Lease, in order."""
    out: dict[int, list[tuple[float, str]]] = {k: [] for k in range(SHARDS)}
    for r in fabric.api.log.records():
        if r.info.resource != "leases" or r.info.verb not in ("create", "update"):
            continue
        if r.status >= 300:
            continue
        doc = r.json() or {}
        name = str(doc.get("metadata", {}).get("name", ""))
        suffix = name.removeprefix(LEASE_PREFIX)
        if suffix.isdigit():
            holder = str((doc.get("spec") or {}).get("holderIdentity") or "")
            out[int(suffix)].append((r.monotonic, holder))
    return out


def double_writers(fabric: Fabric) -> list[str]:
    """Writes by a replica that was not the shard's last written holder at that moment."""
    leases = lease_writes(fabric)
    wrong = []
    for record, device in device_writes(fabric):
        history = leases[shard_of(device, SHARDS)]
        before = [holder for at, holder in history if at <= record.monotonic]
        holder = before[-1] if before else ""
        if holder != pod_of(record):
            wrong.append(f"{record} by {pod_of(record)} while {holder or 'nobody'} held it")
    return wrong


def release_gaps(fabric: Fabric, since: float) -> list[float]:
    """Seconds from each release (empty holder) after `since` to the shard's next claim."""
    gaps = []
    for history in lease_writes(fabric).values():
        released: float | None = None
        for at, holder in history:
            if at < since:
                continue
            if not holder:
                released = at
            elif released is not None:
                gaps.append(at - released)
                released = None
    return gaps


def holders(fabric: Fabric) -> dict[int, str]:
    """shard -> holder as stored now (empty when released or never created)."""
    items = fabric.http.get(LEASES).body.get("items") or []
    found: dict[int, str] = {}
    for item in items:
        suffix = item["metadata"]["name"].removeprefix(LEASE_PREFIX)
        if suffix.isdigit():
            found[int(suffix)] = str(item["spec"].get("holderIdentity") or "")
    return found


def spread(fabric: Fabric) -> dict[str, int]:
    counts: dict[str, int] = {}
    for holder in holders(fabric).values():
        counts[holder] = counts.get(holder, 0) + 1
    return counts


def connected(fabric: Fabric, device: str) -> str:
    return str(condition(fabric.get(f"{device}-job"), "AgentConnected").get("reason", ""))


def bridge_status(fabric: Fabric) -> dict[str, Any]:
    """The retained `bridge/status`, as an observer reads it."""
    observer = connect(fabric.broker, "observer")
    try:
        observer.subscribe(TOPICS.bridge_status())
        message = observer.inbox.wait_for(TOPICS.bridge_status())
        doc: dict[str, Any] = message.json()
        return doc
    finally:
        observer.close()


async def wait_spread(fabric: Fabric, pods: set[str], what: str, timeout: float) -> float:
    """Wait until exactly `pods` hold every shard, each at most its fair share; the time taken."""
    started = time.monotonic()
    share = -(-SHARDS // len(pods))

    def fair() -> bool:
        counts = spread(fabric)
        return (
            set(counts) == pods and sum(counts.values()) == SHARDS and max(counts.values()) <= share
        )

    await async_wait_for(fair, timeout, what=f"{what}: {sorted(pods)} sharing {SHARDS} shards")
    return time.monotonic() - started


async def marker(fleet: Fleet, fabric: Fabric, device: str) -> None:
    """`device` drops its connection (its will fires): its shard's holder must write that, a
    status PATCH and then a Warning Event (recorded on its own budget, after the status)."""
    dropped = time.monotonic()
    fleet[device].drop()

    def written() -> bool:
        kinds = {r.info.resource for r, d in device_writes(fabric, since=dropped) if d == device}
        return kinds >= {"deviceprocesses", "events", "devices"}

    await async_wait_for(written, 10, what=f"{device}: ConnectionLost and its Event written")
    assert connected(fabric, device) == "ConnectionLost"


def test_three_replicas_share_the_writes_hand_over_on_kill_and_rebalance_to_a_fourth(
    fabric: Fabric, secret: bytes
) -> None:
    async def story() -> None:
        # Births say a 600 s heartbeat: the devices stay quiet, nothing about them changes.
        fleet = Fleet(fabric.broker.host, fabric.broker.port, secret, heartbeat_s=600)
        try:
            async with asyncio.timeout(90):
                await sharing(fabric, fleet)
        finally:
            await fleet.close()

    asyncio.run(story())


async def sharing(fabric: Fabric, fleet: Fleet) -> None:
    await fleet.connect(DEVICES)
    for device in DEVICES:
        fabric.create(f"{device}-job", device)
    for pod in ("bridge-a", "bridge-b", "bridge-c"):
        fabric.start_bridge(pod, env=ENV)
    await wait_spread(fabric, {"bridge-a", "bridge-b", "bridge-c"}, "start", 30)

    # Retained births replayed to a starting bridge are no liveness: one heartbeat confirms each.
    def beaten() -> bool:
        fleet.beat()  # sent while the wait sleeps (the fleet's sockets are on this loop)
        return all(connected(fabric, d) == "Connected" for d in DEVICES)

    await async_wait_for(beaten, 30, interval=0.3, what="30 devices Connected")

    # Events follow their status writes on a budget of their own: let them all land, so that
    # everything written from here on is caused by what the test does next.
    def evented() -> bool:
        return {d for r, d in device_writes(fabric) if r.info.resource == "events"} == set(DEVICES)

    await async_wait_for(evented, 30, what="an AgentConnected Event for each device")
    settled = dict.fromkeys(DEVICES, 1)
    await async_wait_for(lambda: fabric.devices_settled(settled), 30, what="every Device written")
    writers = {pod_of(r) for r, _ in device_writes(fabric)}
    print(f"\n[start] 3 replicas, shards {spread(fabric)}, writers {sorted(writers)}")

    # kill -9 one replica: its shards move to the two others within the lease duration.
    victim = next(pod for pod, n in spread(fabric).items() if n > 0)
    moved = {k for k, holder in holders(fabric).items() if holder == victim}
    killed_at = time.monotonic()
    fabric.bridges[victim].kill()
    survivors = {"bridge-a", "bridge-b", "bridge-c"} - {victim}
    took = await wait_spread(
        fabric, survivors, "after the kill", LEASE_DURATION + 4 * RETRY + SLACK
    )
    print(f"[kill] {victim}'s {len(moved)} shards moved in {took:.2f}s: {spread(fabric)}")
    # Nothing changed on the devices: the new holders write nothing...
    target = next(d for d in DEVICES if shard_of(d, SHARDS) in moved)
    await marker(fleet, fabric, target)  # ...but a change on a moved shard is written by them.
    # The victim's will said offline; a replica that gained its shards said online over it.
    await async_wait_for(
        lambda: bridge_status(fabric)["state"] == "online", 5, what="bridge/status online"
    )
    after_kill = device_writes(fabric, since=killed_at)
    assert {d for _, d in after_kill} == {target}, [(str(r), r.json()) for r, _ in after_kill]
    assert {pod_of(r) for r, _ in after_kill} <= survivors

    # A fourth replica: it takes a fair share, again without a needless write.
    joined_at = time.monotonic()
    fabric.start_bridge("bridge-d", env=ENV)
    took = await wait_spread(fabric, {*survivors, "bridge-d"}, "after the join", 20)
    gaps = release_gaps(fabric, joined_at)
    print(f"[join] bridge-d took shards in {took:.2f}s: {spread(fabric)}; {len(gaps)} released")
    # A round, or a lease duration when bridge-d still counts the killed replica's membership
    # (it saw that Lease for the first time and cannot tell how long ago it was renewed).
    print(f"[join] release -> claim by bridge-d: {min(gaps):.2f}-{max(gaps):.2f}s")
    assert len(gaps) == 4  # 6 + 6 -> 4 + 4 + 4: each survivor gave up exactly 2
    gained = {k for k, holder in holders(fabric).items() if holder == "bridge-d"}
    second = next(d for d in DEVICES if shard_of(d, SHARDS) in gained and d != target)
    await async_wait_for(
        lambda: fabric.bridges["bridge-d"].readyz().get("shards") == sorted(gained),
        10,
        what="bridge-d's /readyz listing the shards it holds",
    )
    assert fabric.bridges["bridge-d"].readyz()["role"] == "leader"
    await marker(fleet, fabric, second)
    after_join = device_writes(fabric, since=joined_at)
    assert {d for _, d in after_join} == {second}, [str(r) for r, _ in after_join]
    assert {pod_of(r) for r, _ in after_join} == {"bridge-d"}

    assert double_writers(fabric) == []
    total = device_writes(fabric)
    print(
        f"[writes] {len(total)} status/event writes in all, by {sorted({pod_of(r) for r, _ in total})}"
    )
