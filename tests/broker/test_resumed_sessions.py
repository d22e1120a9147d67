"""A resumed persistent session gets the retained messages of its own filters, and only those.

amqtt 0.12.1 replays, to a session that resumes (clean session off), the retained messages of
*every* client's filters (`broker.py` ~601); `broker.hardening` replaces that path and
`broker.routing` refuses a replay for a filter the session does not hold. This pins the
behaviour on both brokers: a resumed device gets what it subscribed to, nothing else.
"""

from __future__ import annotations

import pytest

from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from tests.support.brokers import BrokerProcess
from tests.support.mqtt import barrier, connect


@pytest.mark.fabric_devices("resume-a")
def test_a_resumed_session_replays_only_its_own_filters(any_broker: BrokerProcess) -> None:
    name, topics = "resume-a", any_broker.topics
    with connect(any_broker, BRIDGE_USER) as bridge, connect(any_broker, OBSERVER_USER) as other:
        assert not other.subscribe(topics.everything()).is_failure  # someone else's filter
        assert bridge.publish(topics.bridge_status(), b"bridge-online", retain=True)
        assert bridge.publish(topics.desired(name), b"desired-1", retain=True)
        barrier(bridge, topics.bridge_status(), [other])
        first = connect(any_broker, name, clean=False)
        assert not first.subscribe(topics.desired(name)).is_failure
        first.inbox.wait_for(topics.desired(name), lambda m: m.payload == b"desired-1")
        first.close()
        with connect(any_broker, name, clean=False) as resumed:
            # (mosquitto replays nothing on resume; the embedded broker the session's own filters)
            assert bridge.publish(topics.desired(name), b"desired-2", retain=True)
            resumed.inbox.wait_for(topics.desired(name), lambda m: m.payload == b"desired-2")
            got = {m.topic for m in resumed.inbox.messages()}
            assert got == {topics.desired(name)}, got  # not bridge/status: it never subscribed
        bridge.publish(topics.desired(name), b"", retain=True)
        bridge.publish(topics.bridge_status(), b"", retain=True)
