"""Fault scenario 4: the Kubernetes API server fails every call, then throttles, then heals.

The whole fabric as on a cluster (`tests.kube.fabric.Fabric`): the API server fake over real
HTTP, a real mosquitto, `devicefabric bridge run --control-plane kube` and one `devicefabric agent
run` per device. Every request of the bridge (lists, watches, Lease renewals, status patches,
Events) is answered 500 for a while (3 s by default, the issue's 60 s with `FAULTS_LONG=1`), then
429 with `Retry-After: 1` until a status write was throttled (or, when a long outage cost the
bridge its Lease, a few requests), then everything is served again. Meanwhile devices
change: one agent is killed -9, one stops cleanly, one connects for the first time.

What must hold: the bridge never exits; its memory stays bounded (RSS sampled all along); the
work is held (the queue keeps the changed keys while writes fail) and retried with back-off, not
in a storm; `Retry-After` is honoured; and once the API server is healthy every resource ends
right with exactly one successful status write per real change (none for the steady device, and
never a no-op patch). Events are best effort (a failed Event is logged, not retried: the status
is what must converge), so each expected Event is written at most once and no other.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.faults.budget import LONG
from tests.support.fabric import Fabric
from tests.support.fakeapi import Match, bridge_user
from tests.support.fakeapi.faults import RequestRecord
from tests.support.processes import (
    BridgeProcess,
)
from tests.support.procfs import rss_kib
from tests.support.resources import condition, settled
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

DEVICES: Final = ("dev-a", "dev-b", "dev-c", "dev-d")
POD: Final = "bridge-a"
FAILING_FOR: Final = 60.0 if LONG else 3.0  # s of 500s
RSS_BOUND_KIB: Final = 30 * 1024  # growth allowed while everything fails


def name_of(device: str) -> str:
    return f"{device}-job"


@pytest.fixture
def fabric(tmp_path: Path, secret: bytes) -> Iterator[Fabric]:
    fab = Fabric.mosquitto(tmp_path, secret, DEVICES, plane="kube")
    try:
        yield fab
    finally:
        fab.close()
    assert fab.api.errors == [], "the fake API server failed while serving"


def bridge_records(fabric: Fabric, since: float) -> list[RequestRecord]:
    user = bridge_user(POD)
    return [r for r in fabric.api.log.records() if r.user == user and r.monotonic >= since]


def status_patches(records: list[RequestRecord]) -> list[RequestRecord]:
    """DeviceProcess status PATCHes (Device and set status writes are counted on their own)."""
    return [
        r
        for r in records
        if r.info.verb == "patch"
        and r.info.subresource == "status"
        and r.info.resource == "deviceprocesses"
    ]


def retry_gaps(records: list[RequestRecord]) -> list[float]:
    """Seconds from each 429 to the bridge's next request for the same method and path."""
    gaps = []
    for index, record in enumerate(records):
        if record.status == 429:
            same = (record.info.method, record.info.path)
            later = next(
                (r for r in records[index + 1 :] if (r.info.method, r.info.path) == same), None
            )
            if later is not None:
                gaps.append(later.monotonic - record.monotonic)
    return gaps


def reason_of(fabric: Fabric, device: str) -> Any:
    return condition(fabric.get(name_of(device)), "AgentConnected").get("reason")


@pytest.mark.timeout(300 if LONG else 120)
def test_api_server_500s_then_429s_then_healthy_converges_without_a_crash_or_a_storm(
    fabric: Fabric,
) -> None:
    bridge: BridgeProcess = fabric.start_bridge(POD)
    for device in DEVICES:
        fabric.create(name_of(device), device)
    for device in DEVICES[:3]:
        fabric.start_agent(device)
    fabric.wait_settled(*(name_of(d) for d in DEVICES[:3]), timeout=30)
    wait_for(
        lambda: condition(fabric.get(name_of("dev-d")), "Synced").get("reason") == "Pending",
        10,
        0.05,
        what="dev-d pending",
    )
    wait_for(lambda: bridge.readyz().get("queueDepth") == 0, 10, 0.05, what="the bridge idle")

    def evented() -> bool:  # Events have a budget of their own: every Connected one landed
        items = fabric.http.get("/apis/events.k8s.io/v1/namespaces/default/events").body["items"]
        seen = {e["regarding"]["name"] for e in items if e["reason"] == "Connected"}
        return seen >= {name_of(d) for d in DEVICES[:3]}

    wait_for(evented, 10, 0.05, what="the Connected Events recorded")
    steady = fabric.get(name_of("dev-a"))
    baseline = rss_kib(bridge.pid)
    rss = [baseline]

    def sample() -> dict[str, Any]:
        assert bridge.alive, bridge.log_text()[-3000:]
        rss.append(rss_kib(bridge.pid))
        return bridge.readyz()

    # Every call of the bridge fails; devices change meanwhile.
    failing_from, failing_rv = time.monotonic(), fabric.api.store.resource_version
    fabric.api.inject(500, 10**9, user=bridge_user(POD))
    fabric.kill_agent("dev-b")
    assert fabric.agents["dev-c"].stop() == 0
    fabric.start_agent("dev-d")
    wait_for(lambda: int(sample().get("queueDepth", 0)) >= 3, 15, 0.1, "the changed keys queued")
    depth = max_depth = int(bridge.readyz().get("queueDepth", 0))

    def failing_long_enough() -> bool:
        nonlocal max_depth
        max_depth = max(max_depth, int(sample().get("queueDepth", 0)))
        return time.monotonic() - failing_from >= FAILING_FOR

    wait_for(failing_long_enough, FAILING_FOR + 5, 0.1, "the outage to last")
    failing = bridge_records(fabric, failing_from)
    failed_for = time.monotonic() - failing_from

    # Throttled, then healthy.
    fabric.api.log.clear_faults()
    throttling_from = time.monotonic()
    fabric.api.log.inject(429, 10**9, Match(user=bridge_user(POD)), retry_after=1)

    def throttled_enough() -> bool:
        """A status write throttled, or (a standby after a long outage writes nothing until it
        leads again, and its Lease requests are throttled too) a few requests and 3 s."""
        sample()
        got = [r for r in bridge_records(fabric, throttling_from) if r.status == 429]
        return bool(status_patches(got)) or (
            len(got) >= 5 and time.monotonic() - throttling_from >= 3.0
        )

    wait_for(throttled_enough, 60, 0.1, "requests throttled")
    throttled = len(bridge_records(fabric, throttling_from))
    fabric.api.log.clear_faults()
    healthy_from = time.monotonic()

    def converged_now() -> bool:
        sample()
        return (
            settled(fabric.get(name_of("dev-d")))
            and reason_of(fabric, "dev-b") == "ConnectionLost"
            and reason_of(fabric, "dev-c") == "Shutdown"
        )

    wait_for(converged_now, 90 if LONG else 30, 0.1, "every resource converged")
    converged = time.monotonic() - healthy_from
    wait_for(lambda: sample().get("queueDepth") == 0, 10, 0.05, what="the bridge idle")
    assert bridge.alive

    records = bridge_records(fabric, failing_from)
    served = [r for r in status_patches(records) if not r.injected]
    per_key = Counter(str(r.info.name) for r in served)
    items = fabric.http.get("/apis/events.k8s.io/v1/namespaces/default/events").body["items"]
    events = Counter(
        (e["regarding"]["name"], e["type"], e["reason"])
        for e in items
        if int(e["metadata"]["resourceVersion"]) > failing_rv
    )
    gaps = retry_gaps(records)
    growth = max(rss) - baseline
    print(
        f"\n[scenario 4] {len(failing)} requests answered 500 in {failed_for:.1f}s "
        f"({len(failing) / failed_for:.1f}/s), queue held {depth}-{max_depth} keys; "
        f"{throttled} x 429 (next attempt after {min(gaps, default=0):.2f}s or more); converged "
        f"{converged:.1f}s after; RSS {baseline / 1024:.1f} MiB, at most +{growth / 1024:.1f} "
        f"MiB; successful status writes {dict(per_key)}; events {dict(events)}"
    )
    assert all(r.status == 500 for r in failing)
    assert len(failing) / failed_for < 30, "the bridge stormed the failing API server"
    assert growth < RSS_BOUND_KIB
    assert gaps, "no throttled request was retried"
    assert min(gaps) >= 0.95, "Retry-After: 1 was not honoured"
    assert [r for r in served if r.noop] == []
    assert per_key.pop(name_of("dev-d")) in (1, 2)
    assert per_key == {name_of("dev-b"): 1, name_of("dev-c"): 1}
    assert set(events) <= {
        (name_of("dev-b"), "Warning", "ConnectionLost"),
        (name_of("dev-c"), "Warning", "Shutdown"),
        (name_of("dev-d"), "Normal", "Connected"),
    }
    assert all(count == 1 for count in events.values())
    assert fabric.get(name_of("dev-a"))["status"] == steady["status"]
    assert settled(fabric.get(name_of("dev-a")))
