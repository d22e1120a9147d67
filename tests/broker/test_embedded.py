"""Tier 2: the embedded broker as users meet it - auth, ACL, revocation, TLS, limits, settings."""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from devicefabric.broker.embedded import BrokerSettings, EmbeddedBroker, bind_listener
from devicefabric.broker.errors import BrokerConfigError
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import DeviceTopic, Topics
from tests.broker.conftest import MakeBroker, MakePeer, MakeRaw
from tests.support.inproc import BrokerThread, Peer
from tests.support.tls import make_ca_and_server
from tests.support.wills import numbered_burst, watched_peer_with_will, watched_with_will

T = Topics()
NOT_AUTHORIZED = 5


def test_a_device_reads_and_writes_only_its_own_topics(peer: MakePeer) -> None:
    observer = peer("observer", watch=T.everything())
    alpha = peer("alpha")
    assert alpha.subscribe(T.desired("alpha")) == 1
    assert alpha.subscribe(T.status("alpha")) == 1
    assert alpha.subscribe(T.bridge_status()) == 1
    assert alpha.subscribe(T.desired("beta")) == 0x80
    assert alpha.subscribe(T.report("beta")) == 0x80
    assert alpha.subscribe("fabric/v1/#") == 0x80
    alpha.publish(T.desired("alpha"), b"self-made desired")  # acknowledged, dropped
    alpha.publish(T.status("beta"), b"impersonation")
    alpha.publish(T.report("alpha"), b"mine")
    observer.inbox.wait_for(T.report("alpha"), b"mine")
    assert [m.topic for m in observer.inbox.messages()] == [T.report("alpha")]


def test_the_observer_reads_everything_and_writes_nothing(peer: MakePeer) -> None:
    first = peer("observer", client_id="observer_1")
    second = peer("observer", client_id="observer_2")  # several watch at once
    for watcher in (first, second):
        assert watcher.subscribe(T.everything()) == 1
    first.publish(T.status("alpha"), b"forged")
    peer("alpha").publish(T.heartbeat("alpha"), b"beat")
    for watcher in (first, second):
        watcher.inbox.wait_for(T.heartbeat("alpha"))
        assert [m.topic for m in watcher.inbox.messages()] == [T.heartbeat("alpha")]


def test_bridge_replicas_publish_desired_and_read_device_topics(peer: MakePeer) -> None:
    one = peer("bridge", client_id="bridge_pod-a")
    two = peer("bridge", client_id="bridge_pod-b")
    assert one.subscribe(T.all_devices(DeviceTopic.STATUS)) == 1
    assert one.subscribe(T.everything()) == 0x80
    alpha = peer("alpha", watch=T.desired("alpha"))
    two.publish(T.desired("alpha"), b'{"revision":"r1"}', retain=True)
    alpha.inbox.wait_for(T.desired("alpha"), b'{"revision":"r1"}')
    alpha.publish(T.status("alpha"), b"online", retain=True)
    one.inbox.wait_for(T.status("alpha"), b"online")


def test_retained_set_and_clear(peer: MakePeer) -> None:
    alpha = peer("alpha")
    alpha.publish(T.status("alpha"), b"online", retain=True)
    first = peer("observer", client_id="observer_a")
    first.subscribe(T.everything())
    first.inbox.wait_for(T.status("alpha"), b"online")
    assert first.inbox.messages()[0].retain
    alpha.publish(T.status("alpha"), b"", retain=True)  # clears it
    alpha.publish(T.heartbeat("alpha"), b"marker")
    later = peer("observer", client_id="observer_b")
    later.subscribe(T.everything())
    alpha.publish(T.heartbeat("alpha"), b"marker2")
    later.inbox.wait_for(T.heartbeat("alpha"), b"marker2")
    assert [m.topic for m in later.inbox.messages()] == [T.heartbeat("alpha")]


def test_qos2_is_routed_once(peer: MakePeer) -> None:
    observer = peer("observer")
    observer.subscribe(T.everything(), qos=2)
    alpha = peer("alpha")
    for i in range(20):
        alpha.publish(T.report("alpha"), str(i).encode(), qos=2)
    observer.inbox.wait_count(20)
    assert [int(m.payload) for m in observer.inbox.messages()] == list(range(20))


def test_a_clean_disconnect_routes_everything_sent_and_publishes_no_will(
    peer: MakePeer, raw: MakeRaw
) -> None:
    observer, client = watched_with_will(peer, raw)
    client.send(numbered_burst(T.heartbeat("alpha"), 500) + bytes([0xE0, 0]))  # then DISCONNECT
    observer.inbox.wait_count(500)
    peer("alpha").publish(T.status("alpha"), b"marker")
    observer.inbox.wait_for(T.status("alpha"), b"marker")
    assert [m.payload for m in observer.inbox.messages(T.status("alpha"))] == [b"marker"]


def test_an_oversized_payload_closes_the_publishers_connection(
    make_inproc_broker: MakeBroker, stack: ExitStack
) -> None:
    broker = make_inproc_broker(max_payload=1024)
    alpha = stack.enter_context(closing(Peer(broker, "alpha")))
    alpha.connect()
    alpha.paho.publish(T.report("alpha"), b"x" * 1025, qos=1)
    assert alpha.disconnected.wait(5)


def test_malformed_and_reserved_user_names_are_refused(raw: MakeRaw) -> None:
    for user in ("Alpha", "alpha_1", "-x", "a" * 64):
        assert raw().connect(user, client_id=user) == NOT_AUTHORIZED


def test_a_revoked_device_is_refused_and_a_newly_revoked_one_is_dropped(
    make_inproc_broker: MakeBroker, stack: ExitStack, tmp_path: Path
) -> None:
    revoked = tmp_path / "revoked"
    revoked.write_text("gone\n")
    broker = make_inproc_broker(revoked_file=revoked)
    gone = stack.enter_context(closing(Peer(broker, "gone")))
    assert gone.connect() is not None
    assert not gone.accepted
    observer, alpha = watched_peer_with_will(broker, stack, b"lost")
    revoked.write_text("gone\nalpha\n")
    os.utime(revoked, ns=(3, 3))
    assert alpha.disconnected.wait(5)
    observer.inbox.wait_for(T.status("alpha"), b"lost")
    again = stack.enter_context(closing(Peer(broker, "alpha")))
    again.connect()
    assert not again.accepted


def test_tls_listener(make_inproc_broker: MakeBroker, stack: ExitStack, tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    broker = make_inproc_broker(tls_cert=cert, tls_key=key)
    assert broker.broker is not None
    assert broker.broker.url.startswith("mqtts://")
    alpha = stack.enter_context(closing(Peer(broker, "alpha", tls_ca=str(ca))))
    alpha.connect()
    assert alpha.accepted
    alpha.subscribe(T.status("alpha"))
    alpha.publish(T.status("alpha"), b"over tls")
    alpha.inbox.wait_for(T.status("alpha"), b"over tls")
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as plain:
        plain.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        plain.settimeout(5)
        assert plain.recv(4) != b"\x20\x02\x00\x00"  # no MQTT without TLS


def test_an_address_in_use_is_a_one_line_error_naming_the_flag() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = HostPort("127.0.0.1", taken.getsockname()[1])
        with pytest.raises(BrokerConfigError) as info:
            bind_listener(address)
    assert str(info.value).startswith("--mqtt: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"tls_cert": Path("/nonexistent")}, "--tls-cert"),
        ({"max_payload": 0}, "--max-payload"),
        ({"max_connections": 0}, "--max-connections"),
        ({"root": "fabric/#"}, "--root"),
    ],
)
def test_invalid_settings_name_their_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(BrokerConfigError, match=flag):
        BrokerSettings(secret=b"s" * 32, **overrides)  # type: ignore[arg-type]


def test_unreadable_tls_files_name_the_flag(tmp_path: Path) -> None:
    settings = BrokerSettings(
        secret=b"s" * 32,
        mqtt=HostPort("127.0.0.1", 0),
        tls_cert=tmp_path / "missing.pem",
        tls_key=tmp_path / "missing.key",
    )

    async def enter() -> None:
        async with EmbeddedBroker(settings):
            pass

    with pytest.raises(BrokerConfigError, match="--tls-cert"):
        asyncio.run(enter())


def test_port_zero_binds_a_free_port_and_reports_it(inproc_broker: BrokerThread) -> None:
    assert inproc_broker.settings.mqtt.port == 0
    assert inproc_broker.port > 0
    with socket.create_connection(("127.0.0.1", inproc_broker.port), timeout=5):
        pass
