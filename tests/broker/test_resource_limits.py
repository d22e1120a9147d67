"""The embedded broker's per-client bounds, shown with real clients on loopback (in process).

Stories of a hostile or careless observer or device: churning subscriptions, holding a
persistent session offline while the fleet talks, hammering a forbidden topic. Each asserts a
bound the broker must keep (`broker.fanout`, `broker.throttling`); the figures quoted in the
closing report come from the `print`ed lines (run with `-s`).
"""

from __future__ import annotations

import logging
import statistics
import struct
import time

import pytest

from devicefabric.broker.embedded import EmbeddedBroker
from devicefabric.broker.hardening import HardenedBroker
from devicefabric.config.topics import Topics
from tests.broker.conftest import MakePeer, MakeRaw
from tests.support.inproc import BrokerThread, Peer, RawPeer
from tests.support.packets import connect_packet, packet, publish_packet
from tests.support.waiting import wait_for

T = Topics()
SUBACK, UNSUBACK = 0x90, 0xB0


def _hardened(broker: EmbeddedBroker) -> HardenedBroker:
    inner = broker._broker
    assert inner is not None
    return inner


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def _subscribe(filters: list[str], packet_id: int) -> bytes:
    body = b"".join(_string(f) + b"\x00" for f in filters)
    return packet(0x82, struct.pack("!H", packet_id) + body)


def _unsubscribe(filters: list[str], packet_id: int) -> bytes:
    return packet(0xA2, struct.pack("!H", packet_id) + b"".join(_string(f) for f in filters))


def _read_acks(raw: RawPeer, kind: int, count: int) -> list[bytes]:
    """`count` SUBACK/UNSUBACK packets (one return code each for SUBACK)."""
    acks = []
    for _ in range(count):
        first = raw.recv_exactly(1)[0]
        assert first == kind, first
        length, shift = 0, 0
        while True:
            byte = raw.recv_exactly(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        acks.append(raw.recv_exactly(length))
    return acks


def _latency_ms(publisher: Peer, watcher: Peer, rounds: int = 30) -> float:
    """Median publish -> delivery time on the device's status topic, in milliseconds."""
    samples = []
    for n in range(rounds):
        payload = f"probe-{n}-{time.monotonic_ns()}".encode()
        start = time.perf_counter()
        publisher.publish(T.status("lat-a"), payload, qos=0)
        watcher.inbox.wait_for(T.status("lat-a"), payload)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def test_churned_subscriptions_leave_no_state_and_delivery_stays_fast(
    peer: MakePeer, raw: MakeRaw, inproc_broker: BrokerThread
) -> None:
    watcher = peer("observer")
    assert watcher.subscribe(T.status("lat-a")) == 1
    device = peer("lat-a")
    baseline_filters = inproc_broker.call(lambda b: len(_hardened(b)._subscriptions))
    before = _latency_ms(device, watcher)

    churner = raw()
    assert churner.connect("observer", client_id="observer_churner") == 0
    total, batch = 5_000, 100
    for start in range(0, total, batch):
        filters = [T.status(f"churn-{n}") for n in range(start, start + batch)]
        pid = start // batch + 1
        churner.send(_subscribe(filters, pid) + _unsubscribe(filters, pid))
        _read_acks(churner, SUBACK, 1)
        _read_acks(churner, UNSUBACK, 1)

    left = inproc_broker.call(lambda b: len(_hardened(b)._subscriptions))
    after = _latency_ms(device, watcher)
    print(f"\nlatency before {before:.2f} ms, after {total} churned filters {after:.2f} ms")
    assert left == baseline_filters + 0  # amqtt kept an empty entry for every filter ever used
    assert after < max(5 * before, before + 20)


def test_a_client_holds_at_most_the_subscription_cap(
    raw: MakeRaw, inproc_broker: BrokerThread
) -> None:
    cap = inproc_broker.call(lambda b: _hardened(b).limits.max_subscriptions)
    client = raw()
    assert client.connect("observer", client_id="observer_greedy") == 0
    filters = [T.status(f"cap-{n}") for n in range(cap + 5)]
    client.send(_subscribe(filters, 1))
    suback = _read_acks(client, SUBACK, 1)[0]
    codes = list(suback[2:])
    assert codes[:cap] == [0] * cap
    assert codes[cap:] == [0x80] * 5
    client.send(_unsubscribe(filters[:5], 2))  # room again: a new filter is granted
    _read_acks(client, UNSUBACK, 1)
    client.send(_subscribe([T.status("cap-new")], 3))
    assert _read_acks(client, SUBACK, 1)[0][2:] == b"\x00"


def test_an_offline_persistent_session_queues_a_bounded_number_of_qos1_messages(
    peer: MakePeer, inproc_broker: BrokerThread
) -> None:
    observer = peer("observer", client_id="observer_persistent", clean=False)
    assert observer.subscribe(T.everything(), qos=1) == 1
    observer.close()
    cid = "observer_persistent"
    wait_for(
        lambda: inproc_broker.call(
            lambda b: _hardened(b)._sessions[cid][0].transitions.state == "disconnected"
        ),
        what="the observer's session to go offline",
    )
    cap = inproc_broker.call(lambda b: _hardened(b).limits.max_queued_offline)
    device = peer("q-a")
    for n in range(200):  # QoS 0 heartbeats are never queued for an offline session
        device.paho.publish(T.heartbeat("q-a"), f"hb-{n}".encode(), qos=0)
    infos = [
        device.paho.publish(T.report("q-a"), f"r-{n}".encode(), qos=1) for n in range(cap + 300)
    ]
    wait_for(lambda: all(i.is_published() for i in infos), timeout=30, what="reports acked")

    def queued() -> list[str]:
        session = _hardened(inproc_broker.broker)._sessions[cid][0]  # type: ignore[arg-type]
        return [m.topic for m in list(session.retained_messages._queue)]

    topics = inproc_broker.call(lambda _: queued())
    counts = inproc_broker.call(lambda b: b.refusal_counts)
    print(f"\noffline queue after {cap + 300} reports and 200 heartbeats: {len(topics)}")
    assert len(topics) == cap
    assert set(topics) == {T.report("q-a")}
    assert counts["offline_queue_full"] == 300


def test_ten_thousand_denied_publishes_log_a_bounded_number_of_lines(
    peer: MakePeer, raw: MakeRaw, inproc_broker: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = peer("observer")
    assert watcher.subscribe(T.status("flood-a")) == 1
    flooder = raw()
    assert flooder.connect("flood-a") == 0
    caplog.set_level(logging.INFO, logger="devicefabric.broker")
    forbidden = publish_packet(T.desired("victim-a"), b'{"revision":"x"}')
    denied = 10_000
    for _ in range(denied // 500):
        flooder.send(forbidden * 500)
    flooder.send(publish_packet(T.status("flood-a"), b"done"))  # routed after every denial
    watcher.inbox.wait_for(T.status("flood-a"), b"done", timeout=30)

    lines = [r for r in caplog.records if getattr(r, "reason", None) == "publish_denied"]
    counts = inproc_broker.call(lambda b: b.refusal_counts)
    print(f"\n{denied} denied publishes: {len(lines)} log line(s)")
    assert counts["publish_denied"] == denied
    assert 1 <= len(lines) <= 3
    assert T.desired("victim-a") in lines[0].getMessage()


def test_a_login_flood_from_one_host_logs_a_bounded_number_of_lines(
    inproc_broker: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devicefabric.broker")
    attempts = 200
    for n in range(attempts):
        with RawPeer(inproc_broker) as attacker:
            attacker.send(connect_packet(f"guess-{n}", "victim-a", "not-the-password"))
            assert attacker.recv_exactly(4) == b"\x20\x02\x00\x05"
    lines = [r for r in caplog.records if getattr(r, "reason", None) == "bad_password"]
    counts = inproc_broker.call(lambda b: b.refusal_counts)
    assert counts["bad_password"] == attempts
    assert 1 <= len(lines) <= 3
    assert lines[0].levelno == logging.WARNING
    assert "victim-a" in lines[0].getMessage()
