"""Tier 1: ingest drops and counts every invalid message and never raises."""

from __future__ import annotations

import json

import pytest

from devicefabric.bridge.ingest import Ingest
from devicefabric.bridge.mirroring import Mirror
from devicefabric.bridge.tracking import DeviceTracker, ReportChanged, Transition
from devicefabric.config.resource import Reason
from devicefabric.config.topics import Topics

T = Topics()


def make() -> Ingest:
    return Ingest(T, DeviceTracker(), Mirror(), limit=1024)


def j(obj: object) -> bytes:
    return json.dumps(obj).encode()


BIRTH = j({"state": "online", "session": "s1", "heartbeat_s": 15, "agent": "x"})


def _birth(**facts: object) -> bytes:
    return j({"state": "online", "session": "s1", "heartbeat_s": 15, "agent": "x", **facts})


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("fabric/v1/devices/Bad_Name/status", BIRTH, "topic"),
        ("fabric/v1/devices/dev-a/unknown", BIRTH, "topic"),
        ("elsewhere/devices/dev-a/status", BIRTH, "topic"),
        ("fabric/v1/devices/dev-a/status", b"{not json", "invalid_json"),
        ("fabric/v1/devices/dev-a/status", b"x" * 2000, "oversized"),
        ("fabric/v1/devices/dev-a/status", j({"state": "online"}), "schema"),
        ("fabric/v1/devices/dev-a/heartbeat", j({"session": "s1", "seq": -1}), "schema"),
        ("fabric/v1/devices/dev-a/heartbeat", b"", "invalid_json"),
        ("fabric/v1/devices/dev-a/report", j({"session": "s1"}), "schema"),
        ("fabric/v1/devices/dev-a/desired", j({"revision": "r", "processes": 3}), "schema"),
        ("fabric/v1/devices/dev-a/status", b"\xff\xfe", "invalid_json"),
        # a bad device fact refuses the whole birth
        ("fabric/v1/devices/dev-a/status", _birth(cpus=0), "schema"),
        ("fabric/v1/devices/dev-a/status", _birth(cpus="4"), "schema"),
        ("fabric/v1/devices/dev-a/status", _birth(memory_bytes=2**63), "schema"),
        ("fabric/v1/devices/dev-a/status", _birth(arch="x" * 65), "schema"),
        ("fabric/v1/devices/dev-a/status", _birth(hostname=None, os=7), "schema"),
    ],
)
def test_invalid_messages_are_dropped_and_counted(topic: str, payload: bytes, reason: str) -> None:
    ingest = make()
    assert ingest.feed(topic, payload, 0.0) == ()
    assert ingest.stats.invalid[reason] == 1
    assert sum(ingest.stats.invalid.values()) == 1
    assert len(ingest.tracker) == 0 or ingest.tracker.get("dev-a") is not None


def test_valid_messages_reach_the_tracker_and_are_counted_by_kind() -> None:
    ingest = make()
    changes = ingest.feed(T.status("dev-a"), BIRTH, 0.0)
    assert changes == (Transition("dev-a", Reason.CONNECTED, None, "s1"),)
    assert ingest.feed(T.heartbeat("dev-a"), j({"session": "s1", "seq": 1}), 1.0) == ()
    report = {"session": "s1", "seq": 1, "revision": "r1", "processes": {}}
    assert ingest.feed(T.report("dev-a"), j(report), 2.0, retained=True) == (
        ReportChanged("dev-a", None),
    )
    assert ingest.stats.messages == {"status": 1, "heartbeat": 1, "report": 1, "desired": 0}
    assert sum(ingest.stats.invalid.values()) == 0


def test_desired_documents_and_their_clearing_update_the_mirror() -> None:
    ingest = make()
    ingest.feed(T.desired("dev-a"), j({"revision": "abc", "processes": []}), 0.0, retained=True)
    assert ingest.mirror.observed == {"dev-a": "abc"}
    ingest.feed(T.desired("dev-a"), b"", 1.0)
    assert ingest.mirror.observed == {}


def test_logs_topics_are_not_state_and_are_skipped_silently() -> None:
    ingest = make()
    assert ingest.feed(T.logs_reply("dev-a"), b"not a state document", 0.0) == ()
    assert ingest.feed(T.logs_request("dev-a"), b"", 0.0) == ()
    assert sum(ingest.stats.invalid.values()) == 0
    assert sum(ingest.stats.messages.values()) == 0


def test_sync_markers_of_any_bridge_are_skipped_silently() -> None:
    ingest = make()
    assert ingest.feed(T.sync_marker("other.1"), b"", 0.0) == ()
    assert sum(ingest.stats.invalid.values()) == 0
    assert T.is_sync_marker(T.sync_marker("x"))
    assert not T.is_sync_marker(T.desired("dev-a"))


def test_the_topic_names_the_device_whatever_the_payload_says() -> None:
    ingest = make()
    ingest.feed(T.status("dev-a"), BIRTH, 0.0)
    ingest.feed(T.status("dev-b"), j({"state": "offline", "session": "s1", "reason": "lost"}), 1.0)
    device_a = ingest.tracker.get("dev-a")
    assert device_a is not None
    assert device_a.reason is Reason.CONNECTED  # dev-b's will, same session string, is dev-b's
