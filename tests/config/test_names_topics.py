"""Tier 1: device names and topics — the contract's spelling, round-trips and filter semantics."""

from __future__ import annotations

import pytest

from devicefabric.config.errors import InvalidDeviceNameError, TopicError
from devicefabric.config.names import is_device_name, is_object_key, validate_device
from devicefabric.config.topics import (
    DEFAULT_ROOT,
    DeviceTopic,
    Topics,
    covers,
    is_valid_filter,
    matches,
    validate_publish_topic,
    validate_root,
)


@pytest.mark.parametrize(
    "name", ["a", "tor9-99", "0", "a" * 63, "x-1-y", "9lives", "bridge1", "observers"]
)
def test_valid_device_names(name: str) -> None:
    assert validate_device(name) == name
    assert is_device_name(name)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("A", "DNS-1123"),
        ("tor9_99", "DNS-1123"),
        ("-a", "DNS-1123"),
        ("a-", "DNS-1123"),
        ("a" * 64, "at most 63"),
        ("a" * 300, "at most 63"),
        ("a/b", "DNS-1123"),
        ("a+b", "DNS-1123"),
        ("#", "DNS-1123"),
        ("bridge", "reserved"),
        ("observer", "reserved"),
        ("dev ice", "DNS-1123"),
        ("dév", "DNS-1123"),
    ],
)
def test_invalid_device_names_say_why(name: str, why: str) -> None:
    with pytest.raises(InvalidDeviceNameError, match=why) as info:
        validate_device(name)
    assert info.value.name == name
    assert not is_device_name(name)


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("default/web", True),
        ("ns-1/a.b.c", True),
        ("default/" + "a" * 253, True),
        ("default/" + "a" * 254, False),
        ("Default/web", False),
        ("default", False),
        ("default/", False),
        ("/web", False),
        ("a/b/c", False),
    ],
)
def test_object_keys(key: str, ok: bool) -> None:
    assert is_object_key(key) is ok


def test_builders_spell_the_contract() -> None:
    t = Topics()
    assert t.status("tor9-99") == "fabric/v1/devices/tor9-99/status"
    assert t.heartbeat("tor9-99") == "fabric/v1/devices/tor9-99/heartbeat"
    assert t.report("tor9-99") == "fabric/v1/devices/tor9-99/report"
    assert t.desired("tor9-99") == "fabric/v1/devices/tor9-99/desired"
    assert t.logs_request("tor9-99") == "fabric/v1/devices/tor9-99/logs/request"
    assert t.logs_reply("tor9-99") == "fabric/v1/devices/tor9-99/logs/reply"
    assert t.bridge_status() == "fabric/v1/bridge/status"
    assert t.all_devices(DeviceTopic.REPORT) == "fabric/v1/devices/+/report"
    assert t.all_devices(DeviceTopic.LOGS_REQUEST) == "fabric/v1/devices/+/logs/request"
    assert t.all_devices(DeviceTopic.LOGS_REPLY) == "fabric/v1/devices/+/logs/reply"
    assert t.all_logs() == "fabric/v1/devices/+/logs/#"
    assert t.everything() == "fabric/v1/#"


@pytest.mark.parametrize("root", ["fabric/v1", "acme/fabric/v2", "x"])
@pytest.mark.parametrize("kind", list(DeviceTopic))
def test_round_trip(root: str, kind: DeviceTopic) -> None:
    t = Topics(root)
    topic = t.device("dev-1", kind)
    assert validate_publish_topic(topic) == topic
    parsed = t.parse(topic)
    assert (parsed.kind, parsed.device) == (kind, "dev-1")
    assert matches(t.all_devices(kind), topic)
    assert not matches(t.all_devices(kind), t.device("dev-1/x", kind))
    assert matches(t.everything(), topic)
    is_logs = kind in (DeviceTopic.LOGS_REQUEST, DeviceTopic.LOGS_REPLY)
    assert matches(t.all_logs(), topic) is is_logs
    assert t.parse(t.bridge_status()).is_bridge_status


@pytest.mark.parametrize(
    "topic",
    [
        "fabric/v1/devices/dev-1/unknown",
        "fabric/v1/devices/dev-1",
        "fabric/v1/devices/Dev/status",
        "fabric/v1/devices/bridge/status",
        "fabric/v1/devices/a/b/status",
        "fabric/v1/devices/dev-1/logs",
        "fabric/v1/devices/dev-1/logs/",
        "fabric/v1/devices/dev-1/logs/other",
        "fabric/v1/devices/dev-1/logs/request/x",
        "fabric/v1/devices/dev-1/request",
        "fabric/v1/devices/dev-1/status/reply",
        "fabric/v1/devices/logs/request",
        "fabric/v1/devices/_sync-x/logs/reply",
        "fabric/v2/devices/dev-1/status",
        "other/devices/dev-1/status",
        "fabric/v1/bridge/other",
        "",
    ],
)
def test_parse_refuses_foreign_topics(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)


@pytest.mark.parametrize("root", ["", "/a", "a/", "a//b", "a/+", "a/#", "$SYS"])
def test_bad_roots(root: str) -> None:
    with pytest.raises(TopicError):
        validate_root(root)


@pytest.mark.parametrize(
    ("flt", "topic", "ok"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/b", "$SYS/b", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/b", "a", False),
    ],
)
def test_matches(flt: str, topic: str, ok: bool) -> None:
    assert matches(flt, topic) is ok


@pytest.mark.parametrize(
    ("allowed", "requested", "ok"),
    [
        ("fabric/v1/#", "fabric/v1/#", True),
        ("fabric/v1/#", "fabric/v1/devices/+/status", True),
        ("fabric/v1/#", "#", False),
        ("fabric/v1/devices/+/status", "fabric/v1/devices/+/status", True),
        ("fabric/v1/devices/+/status", "fabric/v1/devices/d/status", True),
        ("fabric/v1/devices/+/status", "fabric/v1/devices/#", False),
        ("fabric/v1/devices/d/status", "fabric/v1/devices/+/status", False),
        ("a/b", "a/b/c", False),
    ],
)
def test_covers(allowed: str, requested: str, ok: bool) -> None:
    assert covers(allowed, requested) is ok


@pytest.mark.parametrize(
    ("flt", "ok"),
    [("a/#", True), ("#", True), ("a/#/b", False), ("a#", False), ("a/b+", False), ("", False)],
)
def test_filter_validity(flt: str, ok: bool) -> None:
    assert is_valid_filter(flt) is ok


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "$SYS/x", "a\x00b"])
def test_publish_topic_validation(topic: str) -> None:
    with pytest.raises(TopicError):
        validate_publish_topic(topic)


@pytest.mark.parametrize("token", ["abc", "1f2e.3", "a.b.c", ""])
def test_sync_marker_has_no_dot_no_device_and_is_covered_by_desired(token: str) -> None:
    topics = Topics(DEFAULT_ROOT)
    marker = topics.sync_marker(token)
    assert "." not in marker  # NATS disconnects a client naming a topic with a `.`
    assert topics.is_sync_marker(marker)
    assert matches(topics.all_devices(DeviceTopic.DESIRED), marker)
    level = marker.split("/")[-2]
    assert not is_device_name(level)


def test_is_sync_marker_is_false_for_device_topics() -> None:
    topics = Topics(DEFAULT_ROOT)
    assert not topics.is_sync_marker(topics.desired("dev-a"))
    assert not topics.is_sync_marker(topics.desired("sync-a"))
    assert not topics.is_sync_marker("other/v1/devices/_sync-x/desired")
