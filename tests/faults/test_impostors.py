"""Scenario 6, impostors on both brokers: refused or contained, and nothing reaches another device.

Each story runs against a real broker process (mosquitto from our generated config, and the
embedded `devicefabric broker run`) while the fabric it attacks is live and watched:

- the victim device `victim-a` is connected with its own will on its status topic, subscribed to
  everything it may receive; if the impostor kicked it off, its will would show up;
- an observer watches `fabric/v1/#` (and asks for `#`, which the rules do not grant);
- a bridge watches every device topic it may receive (all but the logs requests, which only the
  device itself reads: the victim watches its own).

The impostor then connects (every attempt carries a retained will on the victim's status) with a
wrong password, as a revoked device, under a name with `+`, `#`, `/`, uppercase or 300 characters
(as user name, with a password derived for that very name and with the victim's own password; and
as client id of a genuine device), with a genuine device's login and the victim's client id, or
with a will on the victim's topic. The outcome is pinned per broker: `refused` (a CONNACK failure,
never a silent close) or `contained` (accepted, then every hostile act fails: forged publishes to
the victim's and the bridge's topics, subscriptions to them, and its will on drop).

"Nothing reached anyone" is shown without sleeping: markers are published after the acts on
topics the watchers may receive (`barrier`), and a fresh bridge connection reads back what is
retained and syncs with its own marker (the bridge's `sync_marker`), so a forged retained document
would be found too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

import pytest

from devicefabric.config.access import rules_for
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from devicefabric.config.topics import DeviceTopic, Topics
from tests.faults.budget import outcome
from tests.support.brokers import (
    KIND_PARAMS,
    BrokerKind,
    BrokerProcess,
    prepare,
    running,
)
from tests.support.mqtt import Client, ConnectRefusedError, Will, barrier, connect

pytestmark = pytest.mark.faults

SECRET: Final = b"impostor-secret-0123456789abcdef"
T: Final = Topics()
VICTIM: Final = "victim-a"
INTRUDER: Final = "intruder"  # a genuine, provisioned device turned hostile
REVOKED: Final = "revoked-z"
DEVICES: Final = (VICTIM, INTRUDER, REVOKED)
LONG_NAME: Final = (VICTIM + "-") * 33 + "abc"  # 300 characters, starts like the victim
assert len(LONG_NAME) == 300

Outcome = Literal["refused", "contained"]


def raw_hmac_password(name: str) -> str:
    """The password formula applied to any name, as an attacker who had the secret would."""
    digest = hmac.new(SECRET, name.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class Impostor:
    user: str
    client_id: str
    passwords: tuple[str, ...]  # each is tried; every attempt must end the same way
    will_topic: str = T.status(VICTIM)
    contained_on: frozenset[BrokerKind] = field(default_factory=frozenset)

    def outcome(self, kind: BrokerKind) -> Outcome:
        return "contained" if kind in self.contained_on else "refused"


def _bad_name(name: str) -> Impostor:
    return Impostor(name, name, (raw_hmac_password(name), raw_hmac_password(VICTIM)))


def _bad_client_id(client_id: str) -> Impostor:
    return Impostor(INTRUDER, client_id, (raw_hmac_password(INTRUDER),))


IMPOSTORS: Final = (
    pytest.param(Impostor(VICTIM, VICTIM, ("not-the-password", "")), id="wrong-password"),
    pytest.param(Impostor(REVOKED, REVOKED, (raw_hmac_password(REVOKED),)), id="revoked-device"),
    pytest.param(_bad_name("+"), id="user-plus"),
    pytest.param(_bad_name("#"), id="user-hash"),
    pytest.param(_bad_name(f"{VICTIM}/desired"), id="user-slash"),
    pytest.param(_bad_name(VICTIM.upper()), id="user-uppercase"),
    pytest.param(_bad_name(LONG_NAME), id="user-300-chars"),
    pytest.param(_bad_client_id("+"), id="client-id-plus"),
    pytest.param(_bad_client_id("#"), id="client-id-hash"),
    pytest.param(_bad_client_id(f"{VICTIM}/desired"), id="client-id-slash"),
    pytest.param(_bad_client_id(VICTIM.upper()), id="client-id-uppercase"),
    pytest.param(_bad_client_id(LONG_NAME), id="client-id-300-chars"),
    pytest.param(_bad_client_id(VICTIM), id="client-id-is-the-victims"),
    # mosquitto accepts the CONNECT and drops the will (its ACL check happens on publish).
    pytest.param(
        Impostor(
            INTRUDER,
            INTRUDER,
            (raw_hmac_password(INTRUDER),),
            contained_on=frozenset({"mosquitto"}),
        ),
        id="will-on-the-victims-status",
    ),
)


@pytest.fixture(scope="module", params=KIND_PARAMS)
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    kind: BrokerKind = request.param
    base = tmp_path_factory.mktemp(f"impostors-{kind}")
    with running(prepare(kind, base, SECRET, DEVICES, revoked=[REVOKED])) as process:
        yield process


# Every per-device filter the bridge may subscribe to.
BRIDGE_FILTERS: Final = tuple(
    f
    for f in (T.all_devices(kind) for kind in DeviceTopic)
    if rules_for(BRIDGE_USER, T).may_subscribe(f)
)


@dataclass
class Watchers:
    victim: Client
    observer: Client
    bridge: Client

    def all(self) -> tuple[Client, ...]:
        return (self.victim, self.observer, self.bridge)


@pytest.fixture
def watchers(broker: BrokerProcess) -> Iterator[Watchers]:
    victim_will = Will(T.status(VICTIM), b"victim-was-kicked", retain=False)
    with (
        connect(broker, VICTIM, will=victim_will) as victim,
        connect(broker, OBSERVER_USER) as observer,
        connect(broker, BRIDGE_USER) as bridge,
    ):
        for topic in (
            T.desired(VICTIM),
            T.status(VICTIM),
            T.bridge_status(),
            T.logs_request(VICTIM),
        ):
            assert not victim.subscribe(topic).is_failure
        assert not observer.subscribe(T.everything()).is_failure
        everything = observer.subscribe("#")
        assert everything.is_failure is not rules_for(OBSERVER_USER, T).may_subscribe("#")
        for topic_filter in BRIDGE_FILTERS:
            assert not bridge.subscribe(topic_filter).is_failure
        yield Watchers(victim, observer, bridge)


def attempt(broker: BrokerProcess, impostor: Impostor, password: str, forged: bytes) -> Outcome:
    """Connect as the impostor; if let in, try every hostile act, then vanish (firing the will)."""
    will = Will(impostor.will_topic, forged, retain=True)
    client = outcome(
        lambda: connect(
            broker, impostor.user, client_id=impostor.client_id, password=password, will=will
        ),
        ConnectRefusedError,
    )
    if isinstance(client, ConnectRefusedError):
        assert client.reason_code is not None, "refused by closing the socket, without a CONNACK"
        return "refused"
    try:
        rules = rules_for(impostor.user, T)
        for topic_filter in (T.desired(VICTIM), T.report(VICTIM), T.everything(), "#"):
            assert client.subscribe(topic_filter).is_failure, topic_filter
        for topic in (*(T.device(VICTIM, kind) for kind in DeviceTopic), T.bridge_status()):
            assert not rules.may_publish(topic)
            # QoS 1: once acknowledged (or the connection is closed for it), the broker is done
            # with it, so the watchers' markers below are routed after it.
            client.publish(topic, forged, retain=True)
        assert client.inbox.messages() == [], "the impostor received someone else's messages"
    finally:
        client.drop()
    return "contained"


def assert_nothing_retained(broker: BrokerProcess, forged: bytes) -> None:
    """A fresh bridge reads back every retained device document; none is the forgery."""
    with connect(broker, BRIDGE_USER) as reader:
        for topic_filter in BRIDGE_FILTERS:
            assert not reader.subscribe(topic_filter).is_failure
        sync = T.sync_marker(uuid.uuid4().hex)
        assert reader.publish(sync, b"")
        reader.inbox.wait_for(sync)
        retained = [m for m in reader.inbox.messages() if m.topic != sync]
        assert all(m.payload != forged for m in retained), retained


@pytest.mark.parametrize("impostor", IMPOSTORS)
def test_an_impostor_is_refused_or_contained(
    broker: BrokerProcess, watchers: Watchers, impostor: Impostor
) -> None:
    forged = f"forged-{uuid.uuid4().hex}".encode()

    outcomes = [attempt(broker, impostor, pw, forged) for pw in impostor.passwords]

    assert outcomes == [impostor.outcome(broker.kind)] * len(impostor.passwords)
    barrier(watchers.bridge, T.bridge_status(), [watchers.observer, watchers.victim])
    barrier(watchers.victim, T.heartbeat(VICTIM), [watchers.observer, watchers.bridge])
    assert watchers.victim.connected, "the impostor kicked the victim off"
    for watcher in watchers.all():
        assert all(m.payload != forged for m in watcher.inbox.messages()), watcher
    assert watchers.observer.inbox.messages(T.status(VICTIM)) == [], "the victim's status moved"
    assert_nothing_retained(broker, forged)
