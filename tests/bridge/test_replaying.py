"""A retained replay is checked, not trusted (`bridge.replaying`).

- Tier 1, tables: which expected documents a replay did not deliver, batching, confirmation.
- Tier 2, the link on every broker kind: exact-topic re-reads bring the retained documents again
  (with an overlapping wildcard subscription held), before `on_primed`, and are unsubscribed.
- Tier 2, the bridge: a replay the broker cut short (mosquitto with a tiny per-client queue)
  republishes nothing; documents a restarted broker lost are published again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from devicefabric.bridge.mirroring import build_desired
from devicefabric.bridge.replaying import Expected, ReplayLedger, reread_topics
from devicefabric.bridge.service import Bridge
from devicefabric.config.topics import DEFAULT_ROOT, DeviceTopic, Topics
from devicefabric.config.wire import encode
from tests.support import bridges as scene
from tests.support.bridges import running, settle, until
from tests.support.brokers import (
    KIND_PARAMS,
    BrokerKind,
    BrokerProcess,
    prepare,
    prepare_mosquitto,
)
from tests.support.brokers import running as broker_running
from tests.support.memoryplane import MemoryControlPlane, resource
from tests.support.mqtt import connect
from tests.support.nats import nats_cluster

T = Topics(DEFAULT_ROOT)
D, S = DeviceTopic.DESIRED, DeviceTopic.STATUS


def play(story: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(story())


def sample(bridge: Bridge, name: str) -> float:
    value = bridge.registry.get_sample_value(name, {})
    return 0.0 if value is None else value


# -- tier 1 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seen", "mirrored", "with_resources", "unseen"),
    [
        ([], [], [], []),
        ([("a", D), ("a", S)], ["a"], ["a"], []),
        ([], ["a"], ["a"], [("a", D), ("a", S)]),
        ([("a", S)], ["a", "b"], ["a"], [("a", D), ("b", D)]),
        # a device without resources any more: only its desired is expected (to be emptied)
        ([], ["gone"], [], [("gone", D)]),
        # seen documents of devices nobody expects are simply not asked for
        ([("x", D), ("x", S)], ["b"], [], [("b", D)]),
    ],
)
def test_unseen_lists_expected_documents_the_replay_did_not_deliver(
    seen: list[tuple[str, DeviceTopic]],
    mirrored: list[str],
    with_resources: list[str],
    unseen: list[tuple[str, DeviceTopic]],
) -> None:
    ledger = ReplayLedger()
    for device, kind in seen:
        ledger.saw(device, kind)
    assert ledger.unseen(Expected(frozenset(mirrored), frozenset(with_resources))) == unseen


def test_reports_and_heartbeats_are_not_replayed_documents() -> None:
    ledger = ReplayLedger()
    ledger.saw("a", DeviceTopic.REPORT)
    ledger.saw("a", DeviceTopic.HEARTBEAT)
    assert not ledger.seen("a", DeviceTopic.REPORT)
    assert ledger.unseen(Expected(frozenset({"a"}), frozenset({"a"}))) == [("a", D), ("a", S)]


def test_confirm_names_the_devices_whose_desired_is_still_missing() -> None:
    ledger = ReplayLedger()
    reread = [("a", D), ("a", S), ("b", D), ("c", S)]
    ledger.saw("a", D)  # came back on the re-read
    ledger.saw("c", S)
    assert ledger.confirm(reread) == ["b"]
    assert (ledger.reread, ledger.missing) == (4, 2)  # b's desired, a's status


def test_a_new_connection_forgets_what_the_last_one_saw() -> None:
    ledger = ReplayLedger()
    ledger.saw("a", D)
    ledger.confirm([("a", D)])
    ledger.start()
    assert not ledger.seen("a", D)
    assert (ledger.reread, ledger.missing) == (0, 0)


@pytest.mark.parametrize(("count", "batch", "sizes"), [(0, 3, []), (3, 3, [3]), (7, 3, [3, 3, 1])])
def test_reread_topics_come_in_batches(count: int, batch: int, sizes: list[int]) -> None:
    pairs = [(f"d{i}", D) for i in range(count)]
    batches = list(reread_topics(T, pairs, batch))
    assert [len(b) for b in batches] == sizes
    assert [t for b in batches for t in b] == [T.desired(f"d{i}") for i in range(count)]
    with pytest.raises(ValueError, match="batch"):
        next(reread_topics(T, pairs, 0))


# -- tier 2: the link ------------------------------------------------------------------------------
class _Rereader:
    """A link handler that asks to re-read `batches` and records what arrived when."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = batches
        self.messages: list[tuple[str, bytes, bool]] = []
        self.asked_at: int | None = None  # len(messages) when the link asked
        self.primed_at: int | None = None

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload, retained))

    def on_connected(self) -> None:
        pass

    async def to_reread(self) -> list[list[str]]:
        self.asked_at = len(self.messages)
        return self.batches

    def on_primed(self) -> None:
        self.primed_at = len(self.messages)

    def on_lost(self) -> None:
        pass


@pytest.fixture(
    params=(*KIND_PARAMS, pytest.param("nats", marks=pytest.mark.nats, id="nats")),
)
def replay_broker(
    request: pytest.FixtureRequest, tmp_path: Path, secret: bytes
) -> Iterator[BrokerProcess]:
    kind: BrokerKind = request.param
    devices = ("rr-a", "rr-b", "rr-ghost")
    if kind == "nats":
        with nats_cluster(tmp_path / "nats", secret, devices) as cluster:
            yield cluster.nodes[0]
        return
    with broker_running(prepare(kind, tmp_path, secret, devices)) as broker:
        yield broker


def test_exact_rereads_bring_retained_documents_again_before_priming(
    replay_broker: BrokerProcess,
) -> None:
    broker = replay_broker
    with connect(broker, "bridge", client_id="bridge_earlier") as earlier:
        for device in ("rr-a", "rr-b"):
            assert earlier.publish(T.desired(device), {"doc": device}, retain=True)
    wanted = [T.desired("rr-a"), T.desired("rr-b"), T.desired("rr-ghost")]
    handler = _Rereader([wanted[:2], wanted[2:]])
    link = scene.link(broker.url, broker.password("bridge"), handler, marker_timeout=5.0)

    async def story() -> None:
        task = asyncio.create_task(link.run())
        try:
            await until(lambda: handler.primed_at is not None, 30, "primed")
            assert handler.asked_at is not None
            reread = handler.messages[handler.asked_at : handler.primed_at]
            assert {(t, r) for t, _, r in reread} == {(wanted[0], True), (wanted[1], True)}
            # the exact subscriptions are gone again: a live document arrives once (over the
            # wildcard subscription), not once per overlapping subscription
            assert link.publish(T.desired("rr-a"), b'{"live":1}', retain=False)
            assert link.publish(T.desired("rr-b"), b'{"after":1}', retain=False)
            await until(lambda: (T.desired("rr-b"), b'{"after":1}', False) in handler.messages)
            assert handler.messages.count((T.desired("rr-a"), b'{"live":1}', False)) == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    play(story)


# -- tier 2: the bridge ----------------------------------------------------------------------------
@pytest.mark.mosquitto
def test_a_replay_the_broker_cut_short_is_reread_and_republishes_nothing(
    tmp_path: Path, secret: bytes
) -> None:
    """mosquitto with a per-client queue of 10: the wildcard replay of 150 retained desired
    documents delivers about 30 (20 in flight + 10 queued); before the re-read, the bridge took
    the other ~120 for missing and published them all again."""
    devices = [f"rq-{i:03d}" for i in range(150)]
    broker = prepare_mosquitto(tmp_path, secret, devices, max_queued_messages=10)
    cp = MemoryControlPlane()
    for device in devices:
        cp.apply(resource(f"{device}-p", device))
    with broker_running(broker):
        with connect(broker, "bridge", client_id="bridge_earlier") as earlier:
            for device in devices:  # what an earlier bridge left retained
                doc = build_desired(device, [cp.stored(f"default/{device}-p")])
                assert earlier.publish(T.desired(device), encode(doc), retain=True)

        async def story() -> None:
            async with running(broker, cp) as bridge:
                await settle(bridge, cp)
                assert bridge.snapshot().desired_read_back == len(devices)
                assert sample(bridge, "devicefabric_desired_published_total") == 0
                # the re-read asked for the ~120 lost desired and every status (none retained:
                # no agent ever connected) and found only the status documents missing
                assert sample(bridge, "devicefabric_replay_missing_total") == len(devices)
                assert sample(bridge, "devicefabric_replay_reread_total") > len(devices) + 50

        play(story)


@pytest.mark.mosquitto
@pytest.mark.fabric_devices("lost-a", "lost-b")
def test_documents_a_restarted_broker_lost_are_published_again(
    mosquitto: BrokerProcess,
) -> None:
    """mosquitto without persistence forgets its retained documents on a restart; the bridge
    reconnects, finds them missing and publishes them again (before: it trusted what it had
    observed on the previous connection and published nothing, so an agent that connected
    later got no desired document)."""
    broker = mosquitto
    cp = MemoryControlPlane()
    for device in ("lost-a", "lost-b"):
        cp.apply(resource(f"{device}-p", device))

    async def story() -> None:
        async with running(broker, cp) as bridge:
            await until(
                lambda: bridge.snapshot().desired_read_back == 2, 10, "both documents echoed"
            )
            assert sample(bridge, "devicefabric_desired_published_total") == 2
            sessions = bridge.snapshot().session
            await asyncio.to_thread(broker.restart)
            await until(
                lambda: bridge.snapshot().session != sessions and bridge.snapshot().mqtt_primed, 20
            )
            await until(
                lambda: sample(bridge, "devicefabric_desired_published_total") == 4, 10,
                "both documents published again",
            )  # fmt: skip
            await settle(bridge, cp)

        with connect(broker, "observer") as observer:
            assert not observer.subscribe(T.all_devices(D)).is_failure
            for device in ("lost-a", "lost-b"):
                message = observer.inbox.wait_for(T.desired(device))
                assert json.loads(message.payload)["processes"][0]["name"] == f"{device}-p"

    play(story)
