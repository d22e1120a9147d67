"""Each amqtt 0.12.1 defect of the table in `broker.hardening`, shown closed with real clients on loopback.

`test_<n>_...` is about defect n of that table.
Each of them fails when the override closing defect n is replaced by amqtt's stock method
(checked by hand with a scratch plugin restoring the stock methods; see the closing report).
The few tests without a number pin behaviour the fixes must keep (stock amqtt passes them too).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, closing
from dataclasses import replace

import pytest

from devicefabric.broker.auth import Gatekeeper, Refusal
from devicefabric.config.access import AccessRules
from devicefabric.config.topics import DeviceTopic, Topics
from tests.broker.conftest import MakeBroker, MakePeer, MakeRaw
from tests.support.inproc import Peer, RawPeer
from tests.support.packets import connect_packet, packet, publish_packet, subscribe_packet
from tests.support.wills import numbered_burst, watched_peer_with_will, watched_with_will

T = Topics()
NOT_AUTHORIZED = 5


def test_1_retained_messages_are_not_replayed_past_the_acl(peer: MakePeer) -> None:
    observer = peer("observer")
    assert observer.subscribe(T.everything()) == 1
    alpha = peer("alpha")
    alpha.publish(T.report("alpha"), b'{"secret":1}', retain=True)
    observer.inbox.wait_for(T.report("alpha"))

    beta = peer("beta")  # amqtt replayed every retained message for every client's filters here
    assert beta.subscribe(T.status("beta")) == 1
    beta.publish(T.status("beta"), b"marker")
    beta.inbox.wait_for(T.status("beta"), b"marker")
    assert [m.topic for m in beta.inbox.messages()] == [T.status("beta")]


def test_retained_replay_on_subscribe_is_limited_to_what_the_user_may_receive(
    peer: MakePeer,
) -> None:
    bridge = peer("bridge")
    bridge.publish(T.desired("alpha"), b'{"revision":"a"}', retain=True)
    bridge.publish(T.desired("beta"), b'{"revision":"b"}', retain=True)
    beta = peer("beta")
    assert beta.subscribe(T.desired("beta")) == 1
    assert beta.subscribe(T.desired("alpha")) == 0x80
    beta.inbox.wait_for(T.desired("beta"))
    assert beta.subscribe(T.status("beta")) == 1
    beta.publish(T.status("beta"), b"marker")
    beta.inbox.wait_for(T.status("beta"), b"marker")
    assert not beta.inbox.messages(T.desired("alpha"))


def test_2_a_will_on_another_devices_topic_is_refused(peer: MakePeer) -> None:
    observer = peer("observer", watch=T.everything())
    forger = peer("alpha", connect=False).will(T.status("beta"), b'{"state":"offline"}')
    assert forger.connect() is not None
    assert not forger.accepted
    alpha = peer("alpha")
    alpha.publish(T.status("alpha"), b"marker")
    observer.inbox.wait_for(T.status("alpha"), b"marker")
    assert not observer.inbox.messages(T.status("beta"))


@pytest.mark.parametrize("topic", ["", "fabric/v1/devices/alpha/#", "$SYS/broker/x"])
def test_2_a_will_on_an_invalid_topic_is_refused(raw: MakeRaw, topic: str) -> None:
    client = raw()
    assert client.connect("alpha", will=(topic, b"x")) == NOT_AUTHORIZED


class WillRevokingGatekeeper(Gatekeeper):
    """Rules whose will permission can be withdrawn while a client is connected."""

    wills_allowed = True

    def rules(self, username: str | None) -> AccessRules:
        rules = super().rules(username)
        return rules if self.wills_allowed else replace(rules, will=())


def test_2_a_will_the_acl_denies_at_publication_is_dropped(
    make_inproc_broker: MakeBroker, secret: bytes, stack: ExitStack
) -> None:
    gatekeeper = WillRevokingGatekeeper(secret, T)
    broker = make_inproc_broker(gatekeeper)
    observer, alpha = watched_peer_with_will(broker, stack, b"will")
    gatekeeper.wills_allowed = False
    alpha.drop()  # abrupt: the will would be published now
    again = stack.enter_context(closing(Peer(broker, "alpha")))
    again.connect()  # accepted only once the old connection (and its will) was handled
    again.publish(T.status("alpha"), b"marker")
    observer.inbox.wait_for(T.status("alpha"), b"marker")
    assert [m.payload for m in observer.inbox.messages(T.status("alpha"))] == [b"marker"]


def test_3_keepalive_is_enforced_and_the_will_fires(peer: MakePeer, raw: MakeRaw) -> None:
    observer = peer("observer", watch=T.status("alpha"))
    frozen = raw()
    assert frozen.connect("alpha", keepalive=1, will=(T.status("alpha"), b"lost")) == 0
    silent_since = time.monotonic()
    observer.inbox.wait_for(T.status("alpha"), b"lost", timeout=1.5 * 1 + 1)
    assert time.monotonic() - silent_since <= 2.5


def test_3_a_client_stalling_mid_packet_is_dropped(peer: MakePeer, raw: MakeRaw) -> None:
    observer = peer("observer", watch=T.status("alpha"))
    staller = raw()
    assert staller.connect("alpha", keepalive=1, will=(T.status("alpha"), b"lost")) == 0
    staller.send(publish_packet(T.report("alpha"), b"x" * 100)[:5])  # header, then nothing
    observer.inbox.wait_for(T.status("alpha"), b"lost", timeout=2.5)


def test_3_a_connection_that_never_sends_connect_is_closed(raw: MakeRaw) -> None:
    mute = raw()  # the test broker's connect_timeout is 1 s
    closed_after = mute.closed_within(3.0)
    assert closed_after is not None
    assert closed_after < 2.0


def test_keepalive_zero_is_never_timed_out(peer: MakePeer, raw: MakeRaw) -> None:
    observer = peer("observer", watch=T.status("alpha"))
    idle = raw()
    assert idle.connect("alpha", keepalive=0, will=(T.status("alpha"), b"lost")) == 0
    assert idle.closed_within(2.0) is None  # idle for longer than any 1 s keepalive would allow
    idle.send(publish_packet(T.status("alpha"), b"still here", qos=0))
    observer.inbox.wait_for(T.status("alpha"), b"still here")
    assert [m.payload for m in observer.inbox.messages()] == [b"still here"]


def test_4_every_acknowledged_qos1_message_is_routed(peer: MakePeer, raw: MakeRaw) -> None:
    count = 2000
    bridge = peer("bridge")
    assert bridge.subscribe(T.all_devices(DeviceTopic.REPORT), qos=1) == 1
    alpha = raw()
    assert alpha.connect("alpha") == 0
    alpha.send(
        b"".join(
            publish_packet(T.report("alpha"), str(i).encode(), qos=1, packet_id=i + 1)
            for i in range(count)
        )
    )
    acks = alpha.recv_exactly(4 * count)
    assert acks[-4:] == bytes([0x40, 2]) + count.to_bytes(2, "big")
    alpha.sock.close()  # gone right after the last PUBACK, without a DISCONNECT
    bridge.inbox.wait_count(count, T.report("alpha"), timeout=20)
    payloads = [int(m.payload) for m in bridge.inbox.messages(T.report("alpha"))]
    assert payloads == list(range(count))


def test_4_a_paho_publisher_loses_nothing_it_got_acknowledged(peer: MakePeer) -> None:
    count = 1000
    bridge = peer("bridge")
    assert bridge.subscribe(T.all_devices(DeviceTopic.REPORT), qos=1) == 1
    alpha = peer("alpha", connect=False)
    alpha.paho.max_inflight_messages_set(0)  # unlimited
    alpha.connect()
    infos = [alpha.paho.publish(T.report("alpha"), str(i).encode(), qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(10)
    assert all(info.is_published() for info in infos)
    alpha.paho.disconnect()
    bridge.inbox.wait_count(count, T.report("alpha"), timeout=20)


def test_4_messages_sent_before_a_disconnect_are_routed_before_the_will(
    peer: MakePeer, raw: MakeRaw
) -> None:
    observer, client = watched_with_will(peer, raw)
    client.send(numbered_burst(T.report("alpha"), 300))
    client.sock.close()
    observer.inbox.wait_for(T.status("alpha"), b"lost")
    topics = [m.topic for m in observer.inbox.messages()]
    assert topics == [T.report("alpha")] * 300 + [T.status("alpha")]


@pytest.mark.parametrize(
    ("username", "password"),
    [("alpha", "wrong-password"), ("beta", None), ("observer", None)],
    ids=["wrong-password", "other-device", "role-user"],
)
def test_5_a_refused_connect_with_the_victims_client_id_leaves_the_victim_alone(
    peer: MakePeer, username: str, password: str | None
) -> None:
    observer = peer("observer", watch=T.everything())
    victim = peer("alpha", connect=False).will(T.status("alpha"), b"forged?")
    victim.connect()
    victim.subscribe(T.desired("alpha"))
    attacker = peer(username, connect=False, client_id="alpha", password=password)
    attacker.paho.will_set(T.status("alpha"), b"forged!", qos=1)
    assert attacker.connect() is not None
    assert not attacker.accepted
    bridge = peer("bridge")
    bridge.publish(T.desired("alpha"), b"still yours")
    victim.inbox.wait_for(T.desired("alpha"), b"still yours")
    victim.publish(T.status("alpha"), b"marker")
    observer.inbox.wait_for(T.status("alpha"), b"marker")
    assert [m.payload for m in observer.inbox.messages(T.status("alpha"))] == [b"marker"]
    assert not victim.disconnected.is_set()


def test_6_a_takeover_closes_the_old_connection(peer: MakePeer, raw: MakeRaw) -> None:
    observer = peer("observer", watch=T.status("alpha"))
    old = raw()
    assert old.connect("alpha", will=(T.status("alpha"), b"old will")) == 0
    new = peer("alpha")
    assert new.accepted
    assert old.closed_within(2.0) is not None
    observer.inbox.wait_for(T.status("alpha"), b"old will")  # clean sessions: the old will fires


def test_6_a_persistent_takeover_resumes_the_session(peer: MakePeer) -> None:
    first = peer("alpha", clean=False)
    assert first.subscribe(T.desired("alpha")) == 1
    second = peer("alpha", clean=False)
    assert second.session_present
    first.disconnected.wait(2.0)
    assert first.disconnected.is_set()
    peer("bridge").publish(T.desired("alpha"), b"after takeover")
    second.inbox.wait_for(T.desired("alpha"), b"after takeover")


class ExplodingGatekeeper(Gatekeeper):
    def admit(
        self, username: str | None, password: str | bytes | None, client_id: str | None
    ) -> Refusal | None:
        if username == "alpha":
            raise RuntimeError("auth backend down")
        return super().admit(username, password, client_id)


def test_7_an_exception_in_authentication_is_a_refusal(
    make_inproc_broker: MakeBroker, secret: bytes
) -> None:
    broker = make_inproc_broker(ExplodingGatekeeper(secret, T))
    with RawPeer(broker) as client:
        assert client.connect("alpha") == NOT_AUTHORIZED
        assert client.closed_within(2.0) is not None
    with RawPeer(broker) as other:
        assert other.connect("beta") == 0


MALFORMED = {
    "reserved-type": packet(0x00, b""),
    "server-only-type": packet(0x20, b"\x00\x00"),
    "wildcard-topic": publish_packet("fabric/v1/devices/alpha/#", b"x"),
    "empty-topic": publish_packet("", b"x"),
    "qos-3": bytes([0x36]) + publish_packet(T.report("alpha"), b"x", qos=1)[1:],
    "subscribe-bad-flags": subscribe_packet(T.desired("alpha"), flags=0),
    "subscribe-bad-qos": subscribe_packet(T.desired("alpha"), qos=3),
    "second-connect": connect_packet("alpha", "alpha", "pw"),
    "length-too-long": bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
    "bad-fixed-length": packet(0xC0, b"\x00"),
    "truncated-string": packet(0x30, b"\x00\x10ab"),
    "oversized-payload": publish_packet(T.report("alpha"), b"x" * (64 * 1024 + 1)),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_8_a_malformed_packet_closes_the_connection(raw: MakeRaw, data: bytes) -> None:
    client = raw()
    assert client.connect("alpha") == 0
    client.send(data)
    assert client.closed_within(2.0) is not None


def test_8_a_closed_malformed_client_fires_its_will(peer: MakePeer, raw: MakeRaw) -> None:
    observer = peer("observer", watch=T.status("alpha"))
    client = raw()
    assert client.connect("alpha", will=(T.status("alpha"), b"lost")) == 0
    client.send(publish_packet("fabric/v1/+/x", b"x"))
    observer.inbox.wait_for(T.status("alpha"), b"lost")
