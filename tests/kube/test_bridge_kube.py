"""End to end on Kubernetes: real bridge processes, real agents, real mosquitto, the fake over HTTP.

Each test tells one story a cluster operator cares about and checks it in the fake's request log,
the way an audit log would: what the bridge wrote (status PATCHes, Event POSTs), how often, how
fast, and that every request is granted by our shipped RBAC. Silence ("nothing was written") is
shown by a positive marker: a later change the bridge must write, after which the counts are
final. Counts and timings are printed (`-s`) for the issue's closing note.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from devicefabric.config import deploybundle as manifests
from tests.support.fabric import Fabric, audited
from tests.support.fakeapi import Match
from tests.support.fakeapi.client import dp_path
from tests.support.fakeapi.faults import RequestRecord
from tests.support.mqtt import connect
from tests.support.resources import condition, settled
from tests.support.waiting import wait_for

DEVICES = ("tor9-99", "dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f")


@pytest.fixture
def fabric(tmp_path: Path, secret: bytes) -> Iterator[Fabric]:
    with audited(tmp_path, secret, DEVICES) as fab:
        yield fab


def writes(
    fabric: Fabric,
    since: float = 0.0,
    pod: str | None = None,
    resource: str = "deviceprocesses",
) -> list[RequestRecord]:
    """Status PATCHes of `resource` and Event POSTs by the bridge(s), after `since` (monotonic)."""
    return [
        r
        for r in fabric.api.log.records()
        if r.user.startswith("system:serviceaccount")
        and (pod is None or r.user.endswith(f"#{pod}"))
        and r.monotonic >= since
        and (
            (r.info.verb == "patch" and r.info.resource == resource)
            or (r.info.verb == "create" and r.info.resource == "events")
        )
    ]


def keys(records: list[RequestRecord], verb: str) -> list[str]:
    return sorted(f"{r.info.namespace}/{r.info.name}" for r in records if r.info.verb == verb)


def events_since(fabric: Fabric, since_rv: int) -> list[dict[str, Any]]:
    items = fabric.http.get("/apis/events.k8s.io/v1/namespaces/default/events").body["items"]
    return [e for e in items if int(e["metadata"]["resourceVersion"]) > since_rv]


def wait_connection_lost(
    fabric: Fabric, names: Iterable[str], timeout: float, interval: float
) -> None:
    """Wait until every resource in `names` has AgentConnected=False for ConnectionLost."""
    wait_for(
        lambda: all(
            condition(fabric.get(n), "AgentConnected").get("reason") == "ConnectionLost"
            for n in names
        ),
        timeout,
        interval,
        what="every resource ConnectionLost",
    )


def marker(fabric: Fabric, name: str, device: str, *, settle: bool = True) -> None:
    """A change the bridge must write; once written, every earlier write has happened.

    `settle` waits for the whole status (two writes at least `min_write_interval` apart), so a
    duplicate of an earlier write, held back by that interval, would have happened too.
    """
    fabric.create(name, device)
    if settle:
        fabric.wait_settled(name)
    else:
        wait_for(lambda: condition(fabric.get(name), "AgentConnected"), 10, 0.02, what=name)


DEV_A_COUNT = {"processes": 2}
LEASE_ENV = {
    "DEVICEFABRIC_LEASE_DURATION": "2",
    "DEVICEFABRIC_RENEW_DEADLINE": "1.5",
    "DEVICEFABRIC_RETRY_PERIOD": "0.25",
}
BRIDGE_A = "system:serviceaccount:devicefabric-system:devicefabric-bridge#bridge-a"
BRIDGE_B = "system:serviceaccount:devicefabric-system:devicefabric-bridge#bridge-b"


def test_a_day_in_the_life_of_the_bridge_on_kubernetes(fabric: Fabric, kubectl: str) -> None:
    """apply -> Running; heartbeats write nothing; kill -9 an agent; watch cut and compacted;
    the leader killed -> the standby leads within the lease, with no redundant write."""
    started = time.monotonic()
    leader = fabric.start_bridge("bridge-a", env=LEASE_ENV)
    agents = ("tor9-99", "dev-a", "dev-b", "dev-c", "dev-d")
    for device in agents:
        fabric.start_agent(device)
    wait_for(lambda: fabric.leader() == "bridge-a", 10, 0.02, what="bridge-a leading")
    standby = fabric.start_bridge("bridge-b", env=LEASE_ENV)
    sample = next(d for d in manifests.samples().split("---\n") if "name: tor9-99-clock" in d)
    applied = fabric.kubectl(kubectl, "apply", "--validate=false", "-f", "-", stdin=sample)
    assert applied.returncode == 0, applied.stderr
    fabric.create("tor9-99-second", "tor9-99")
    for device in agents[1:]:
        fabric.create(f"{device}-job", device)
    names = ["tor9-99-clock", "tor9-99-second", *(f"{d}-job" for d in agents[1:])]
    fabric.wait_settled(*names, timeout=20)
    print(f"\n[apply] 6 resources Running/Connected/Synced after {time.monotonic() - started:.1f}s")
    clock = fabric.get("tor9-99-clock")
    assert clock["status"]["observedGeneration"] == clock["metadata"]["generation"] == 1
    wait_for(lambda: standby.readyz().get("ready") is True, 10, 0.05, what="the standby ready")
    assert (leader.readyz()["role"], standby.readyz()["role"]) == ("leader", "standby")
    assert "notLeading" not in leader.readyz()
    assert "is held by" in standby.readyz()["notLeading"]

    # The bridge created a Device per device and wrote its status (processes counted).
    expected = {d: sum(1 for n in names if n.startswith(d)) for d in agents}
    wait_for(lambda: fabric.devices_settled(expected), 15, 0.05, what="Devices written")

    # Heartbeats from every device: neither replica writes anything.
    observer = connect(fabric.broker, "observer")
    try:
        observer.subscribe("fabric/v1/devices/+/heartbeat")
        quiet_from, quiet_rv = time.monotonic(), fabric.api.store.resource_version
        for device in agents:
            observer.inbox.wait_count(2, f"fabric/v1/devices/{device}/heartbeat", timeout=10)
        beats = len(observer.inbox.messages())
    finally:
        observer.close()
    marker(fabric, "marker-1", "dev-a", settle=False)
    quiet = writes(fabric, quiet_from)
    assert set(keys(quiet, "patch")) == {"default/marker-1"}
    on_devices = [r for r in writes(fabric, quiet_from, resource="devices") if r.info.name]
    # the marker is one more process on dev-a: its Device counts it (that write, no other)
    assert [(r.info.name, r.json()["status"]) for r in on_devices] in ([], [("dev-a", DEV_A_COUNT)])
    assert {e["regarding"]["name"] for e in events_since(fabric, quiet_rv)} <= {"marker-1"}
    print(
        f"[heartbeats] {beats} heartbeats from {len(agents)} devices: 0 writes (but the marker's)"
    )

    # kill -9 one agent: exactly one status PATCH and one Event per resource of that device.
    killed_at, killed_rv = time.monotonic(), fabric.api.store.resource_version
    fabric.kill_agent("tor9-99")
    lost = ("tor9-99-clock", "tor9-99-second")
    wait_connection_lost(fabric, lost, 10, 0.02)
    detected = time.monotonic() - killed_at
    marker(fabric, "marker-2", "dev-b")
    after = writes(fabric, killed_at)
    assert [k for k in keys(after, "patch") if "marker" not in k] == [f"default/{n}" for n in lost]
    events = [e for e in events_since(fabric, killed_rv) if "marker" not in e["regarding"]["name"]]
    assert sorted((e["regarding"]["name"], e["type"], e["reason"]) for e in events) == [
        (n, "Warning", "ConnectionLost") for n in lost
    ]
    assert {r.user for r in after} == {BRIDGE_A}
    device_writes = [
        (r.info.name, condition(r.json(), "Connected").get("reason"))
        for r in writes(fabric, killed_at, resource="devices")
        if r.info.name == "tor9-99"
    ]
    assert device_writes == [("tor9-99", "ConnectionLost")]  # one Device write for the device
    print(
        f"[kill -9 agent] ConnectionLost written {detected:.2f}s later: 1 PATCH + 1 Event per resource"
    )

    # The watches are cut; a change lands while the bridges are away: resumed, not re-listed.
    lists = Match(verb="list", resource="deviceprocesses", user=BRIDGE_A)
    assert fabric.api.log.count(lists) == 1
    hold = [
        fabric.api.log.inject(503, 10_000, Match(verb="watch", user=u))
        for u in (BRIDGE_A, BRIDGE_B)
    ]
    assert fabric.api.drop_watches() == 6  # three informers a bridge: processes, devices, sets
    wait_for(lambda: all(f.hits >= 1 for f in hold), 5, 0.02, what="both bridges held off")
    fabric.http.merge(dp_path(name="dev-a-job"), {"spec": {"command": ["sleep", "301"]}})
    fabric.api.log.clear_faults()
    wait_for(lambda: generation_applied(fabric, "dev-a-job", 2), 15, 0.05)
    assert fabric.api.log.count(lists) == 1

    # Cut again, three changes, the history compacted: 410, re-list and diff, nothing missed.
    hold = [
        fabric.api.log.inject(503, 10_000, Match(verb="watch", user=u))
        for u in (BRIDGE_A, BRIDGE_B)
    ]
    fabric.api.drop_watches()
    wait_for(lambda: all(f.hits >= 1 for f in hold), 5, 0.02, what="both bridges held off")
    fabric.http.merge(dp_path(name="dev-b-job"), {"spec": {"command": ["sleep", "302"]}})
    fabric.create("dev-c-extra", "dev-c")
    fabric.http.request("DELETE", dp_path(name="dev-d-job"))
    fabric.api.compact()
    fabric.api.log.clear_faults()
    wait_for(lambda: generation_applied(fabric, "dev-b-job", 2), 15, 0.05)
    fabric.wait_settled("dev-c-extra")
    assert fabric.api.log.count(lists) == 2
    print(
        f"[watch] cut twice, compacted once: {fabric.api.log.count(lists)} lists by the leader; "
        "every change applied; 0 no-op writes"
    )

    # kill -9 the leader: the standby leads within the lease duration, and writes nothing redundant.
    pids = {n: fabric.get(n)["status"]["pid"] for n in ("dev-a-job", "dev-b-job", "dev-c-job")}
    killed_at, killed_rv = time.monotonic(), fabric.api.store.resource_version
    leader.kill()
    wait_for(lambda: fabric.leader() == "bridge-b", 10, 0.02, what="bridge-b leading")
    took = time.monotonic() - killed_at
    assert took <= 2 + 2 * 0.25 * 1.2 + 1.0, took  # lease + two retry periods + slack
    wait_for(lambda: standby.readyz().get("role") == "leader", 5, 0.05)
    marker(fabric, "marker-3", "dev-c")
    assert set(keys(writes(fabric, killed_at, pod="bridge-b"), "patch")) == {"default/marker-3"}
    assert {e["regarding"]["name"] for e in events_since(fabric, killed_rv)} <= {"marker-3"}
    assert {n: fabric.get(n)["status"]["pid"] for n in pids} == pids  # no restart, no re-mirror
    print(
        f"[leader] bridge-a killed: bridge-b leads after {took:.2f}s (lease 2s, retry 0.25s); "
        "its writes: the marker's only"
    )


def generation_applied(fabric: Fabric, name: str, generation: int) -> bool:
    obj = fabric.get(name)
    return settled(obj) and obj["status"]["observedGeneration"] == generation


def test_faults_during_a_mass_disconnect_respect_the_write_rate(fabric: Fabric) -> None:
    qps, burst, event_qps, event_burst = 20.0, 5, 10.0, 5
    fabric.start_bridge(
        "bridge-a",
        env={
            "DEVICEFABRIC_WRITE_QPS": str(qps),
            "DEVICEFABRIC_WRITE_BURST": str(burst),
            "DEVICEFABRIC_EVENT_QPS": str(event_qps),
            "DEVICEFABRIC_EVENT_BURST": str(event_burst),
        },
    )
    devices = ("dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f")
    names = [f"{d}-{i}" for d in devices for i in (1, 2)]
    for device in devices:
        fabric.start_agent(device)
    for name in names:
        fabric.create(name, name.rsplit("-", 1)[0])
    fabric.wait_settled(*names, timeout=20)

    status_writes = Match(verb="patch", resource="deviceprocesses", subresource="status")
    fabric.api.log.inject(500, 25, status_writes)
    fabric.api.log.inject(429, 25, status_writes, retry_after=1)
    killed_at = time.monotonic()
    for device in devices:
        fabric.kill_agent(device)
    wait_connection_lost(fabric, names, 30, 0.1)
    took = time.monotonic() - killed_at
    injected = fabric.api.log.count(injected=True)
    assert injected == 50
    # Status patches and Events each keep to their own budget (the Event one apart, so that a
    # status write never waits for an Event).
    # Device status patches share the status budget (one queue, one bucket): counted together.
    both = {id(w): w for w in [*writes(fabric), *writes(fabric, resource="devices")]}
    everything = sorted(both.values(), key=lambda w: w.monotonic)
    assert any(w.info.resource == "devices" for w in everything)
    for kind, rate, allowance in (("patch", qps, burst), ("create", event_qps, event_burst)):
        calls = [w for w in everything if w.info.verb == kind]
        for first, last in itertools.combinations(range(len(calls)), 2):
            span = calls[last].monotonic - calls[first].monotonic
            assert last - first + 1 <= allowance + rate * span + 1, f"{kind}s above their rate"
    retried = _retry_gaps(writes(fabric, killed_at))
    assert retried
    assert min(retried) >= 0.95, "Retry-After: 1 was not honoured"
    print(
        f"\n[faults] 12 resources, 50 injected 500/429: all ConnectionLost after {took:.1f}s; "
        f"{len(writes(fabric, killed_at))} write attempts, status never above {qps:g}/s + burst "
        f"{burst}, Events never above {event_qps:g}/s + burst {event_burst}"
    )


def _retry_gaps(records: list[RequestRecord]) -> list[float]:
    """Seconds between a 429 on a resource and that resource's next attempt."""
    gaps = []
    for index, record in enumerate(records):
        if record.status == 429:
            later = next(
                (
                    r
                    for r in records[index + 1 :]
                    if r.info.name == record.info.name and r.info.verb == record.info.verb
                ),
                None,
            )
            if later is not None:
                gaps.append(later.monotonic - record.monotonic)
    return gaps


def test_each_spec_change_is_exactly_one_status_write(fabric: Fabric) -> None:
    """Real agent, real processes: each spec change (stop the old process, start the new one) is
    one status PATCH, the completing one, and no Event; its intermediate states are not written."""
    bridge = fabric.start_bridge("bridge-a")
    fabric.start_agent("tor9-99", heartbeat=15)
    names = ["tor9-99-a", "tor9-99-b", "tor9-99-c"]
    for name in names:
        fabric.create(name, "tor9-99")
    fabric.wait_settled(*names, timeout=20)
    # the Events of that first settle go through their own worker: let them land before counting
    wait_for(
        lambda: len(keys(writes(fabric), "create")) >= len(names),
        10,
        0.01,
        what="the first settle's Events recorded",
    )

    def all_applied(generation: int) -> bool:
        return all(generation_applied(fabric, n, generation) for n in names)

    def drained() -> bool:
        return bridge.readyz().get("queueDepth") == 0

    for round_ in (2, 3):
        changed_at = time.monotonic()
        for name in names:
            command = ["sleep", f"{300 + round_}"]
            fabric.http.merge(dp_path(name=name), {"spec": {"command": command}})
        wait_for(partial(all_applied, round_), 15, 0.01, what="all Running at the new generation")
        for _ in range(2):  # an echo of the last write may enqueue a key just after it
            wait_for(drained, 5, 0.01, what="the bridge's queue drained")
        patches = keys(writes(fabric, changed_at), "patch")
        assert patches == [f"default/{n}" for n in names], patches
        assert keys(writes(fabric, changed_at), "create") == []
        for name in names:
            status = fabric.get(name)["status"]
            assert (status["phase"], status["observedGeneration"]) == ("Running", round_)
