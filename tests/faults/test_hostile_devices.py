"""Fault scenario 5: hostile devices, authenticated as themselves, cannot lie the fabric over.

A real mosquitto (our generated ACLs: a device may only publish on its own topics) and `devicefabric
bridge run` on the local control plane. `victim` is a real agent running a process; `evil` is a
device the test plays, with a resource of its own; `spammer` has none. While `evil` sends
garbage JSON, wrong schemas, payloads just over the 64 KiB limit (which the broker still passes),
`processes` maps over the 256-entry limit, a report about the victim's resource, and status and
heartbeats claiming the victim's session, and `spammer` sends 10 MB (which the broker refuses by
closing its connection), a well-behaved device drops and must be written as quickly as ever.

Afterwards: every dropped message is counted under its reason in
`devicefabric_invalid_messages_total` (exactly), the warnings about them are rate-limited, nothing
was written to the victim's or evil's resources (not even a timestamp), and the bridge kept
serving. `FAULTS_LONG=1` sends ten times as much garbage.

A report whose `seq` does not advance within its session (a replay) is dropped and counted as
`sequence`: `test_a_report_going_back_in_sequence_is_dropped`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from devicefabric.bridge.ingest import LOG_BURST, LOG_WINDOW
from devicefabric.config.wire import MAX_PAYLOAD_BYTES, MAX_PROCESSES
from tests.faults.budget import LONG
from tests.support.fabric import Fabric
from tests.support.mqtt import Will, connect
from tests.support.processes import (
    BridgeProcess,
    Doc,
)
from tests.support.resources import key, manifest, reason

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

ROUNDS: Final = 50 if LONG else 5  # each round sends every kind of garbage below
DEVICES: Final = ("victim", "evil", "spammer", "good", "marker")
EVIL_PID: Final = 4242
STARTED: Final = "2024-05-01T12:00:00Z"


def report(session: str, seq: int, processes: dict[str, Doc]) -> Doc:
    return {"session": session, "seq": seq, "revision": "r1", "processes": processes}


def entry(phase: str = "Running", pid: int | None = EVIL_PID) -> Doc:
    doc: Doc = {"generation": 1, "phase": phase, "restarts": 0, "startedAt": STARTED}
    if pid is not None:
        doc["pid"] = pid
    return doc


class Evil:
    """The `evil` device: connected with its will, born under `session`, its process Running."""

    def __init__(self, fab: Fabric, device: str = "evil") -> None:
        self.topics = fab.broker.topics
        self.device = device
        self.session = f"{device}-1"
        will = {"state": "offline", "session": self.session, "reason": "lost"}
        self.client = connect(
            fab.broker, device, will=Will(self.topics.status(device), json.dumps(will))
        )
        self.own = {key(f"{device}-proc"): entry()}
        birth = {"state": "online", "session": self.session, "heartbeat_s": 3600, "agent": "t"}
        assert self.client.publish(self.topics.status(device), birth, retain=True)
        self.seq = 1
        self.send_report(self.own)

    def send_report(self, processes: dict[str, Doc], seq: int | None = None) -> None:
        if seq is None:
            self.seq += 1
        doc = report(self.session, self.seq if seq is None else seq, processes)
        assert self.client.publish(self.topics.report(self.device), doc, retain=True)

    def garbage(self, victim_session: str) -> Iterator[tuple[str, bytes, str | None]]:
        """(topic, payload, the reason the bridge must count, or None when it is valid)."""
        t = self.topics
        d = self.device
        for payload in (b"{oops", b"\xff\xfe\x00", b"[1,", b'{"session":'):
            for topic in (t.report(d), t.status(d), t.heartbeat(d)):
                yield topic, payload, "invalid_json"
        for payload in (b"null", b"{}", b"[]", b'"x"', b'{"session":"s","seq":"1"}'):
            for topic in (t.report(d), t.status(d), t.heartbeat(d)):
                yield topic, payload, "schema"
        wrong = [
            report(self.session, 9, {key("x"): {**entry(), "pid": -1}}),
            report(self.session, 9, {key("x"): {**entry(), "startedAt": "yesterday"}}),
            report(self.session, 9, {key("x"): {**entry(), "phase": "Dancing"}}),
            report(self.session, 9, {"not a key": entry()}),
            report(self.session, 2**64, self.own),
            {"state": "online", "session": self.session, "heartbeat_s": 0, "agent": "t"},
        ]
        for doc in wrong:
            topic = t.status(d) if "state" in doc else t.report(d)
            yield topic, json.dumps(doc).encode(), "schema"
        huge = {key(f"p{i}"): entry() for i in range(MAX_PROCESSES + 44)}
        yield t.report(d), json.dumps(report(self.session, 9, huge)).encode(), "schema"
        padding = {key("x"): {**entry(), "message": "x" * 1000}}
        over = json.dumps(report(self.session, 9, padding)).encode()
        over += b" " * (MAX_PAYLOAD_BYTES + 64 - len(over))  # valid JSON, 64 bytes too long
        yield t.report(d), over, "oversized"
        # Valid documents that must change nothing: a report naming the victim's resource (the
        # bridge reads a report only for the sender's own resources), the victim's session in
        # evil's offline status and heartbeat (a session is only ever matched per device).
        self.seq += 1  # a valid report moves its session's sequence forward
        yield t.report(d), json.dumps(report(
            self.session, self.seq, {**self.own, key("victim-proc"): entry("Failed", None)}
        )).encode(), None  # fmt: skip
        offline = {"state": "offline", "session": victim_session, "reason": "shutdown"}
        yield t.status(d), json.dumps(offline).encode(), None
        yield t.heartbeat(d), json.dumps({"session": victim_session, "seq": 1}).encode(), None

    def close(self) -> None:
        self.client.close()


def invalid(bridge: BridgeProcess) -> dict[str, float]:
    return bridge.metrics().by("devicefabric_invalid_messages_total", "reason")


@pytest.mark.timeout(180 if LONG else 90)
def test_hostile_devices_are_dropped_and_counted_and_write_nothing_false(
    tmp_path: Path, secret: bytes
) -> None:
    with Fabric.mosquitto(tmp_path, secret, DEVICES, plane="local") as fab:
        fab.apply(
            manifest("victim-proc", "victim", ["sleep", "600"]),
            manifest("evil-proc", "evil", ["sleep", "600"]),
            manifest("good-proc", "good", ["sleep", "600"]),
        )
        marker = fab.marker()
        bridge = fab.start_bridge()
        fab.start_agent("victim")
        evil = Evil(fab)
        good_will = json.dumps({"state": "offline", "session": "g-1", "reason": "lost"})
        good = connect(fab.broker, "good", will=Will(fab.broker.topics.status("good"), good_will))
        good_birth = {"state": "online", "session": "g-1", "heartbeat_s": 3600, "agent": "t"}
        assert good.publish(fab.broker.topics.status("good"), good_birth, retain=True)
        fab.wait_settled("victim-proc", "evil-proc")
        fab.wait(lambda: reason(fab.status("good-proc")) == "Connected", 10, "good connected")
        bridge.wait_idle()
        victim_before = fab.status("victim-proc")
        evil_before = fab.status("evil-proc")
        victim_session = bridge.devices()["victim"]["session"]
        counted_before = invalid(bridge)
        mark = fab.ledger.mark()

        expected: dict[str, int] = {}
        sent = 0

        def attack() -> None:
            nonlocal sent
            for _ in range(ROUNDS):
                for topic, payload, why in evil.garbage(victim_session):
                    evil.client.paho.publish(topic, payload, qos=1)
                    sent += 1
                    if why is not None:
                        expected[why] = expected.get(why, 0) + 1
            evil.send_report(evil.own)  # acknowledged: everything before is routed

        attacker = threading.Thread(target=attack, name="attack")
        spammer = connect(fab.broker, "spammer")
        try:
            attacker.start()
            # 10 MB: mosquitto's max_packet_size (the payload limit) closes the connection.
            spammer.paho.publish(fab.broker.topics.report("spammer"), b"x" * 10_000_000, qos=1)
            assert spammer.disconnected.wait(30), "the broker accepted 10 MB"
            # Meanwhile a well-behaved device drops: the bridge must notice as fast as ever.
            dropped = time.monotonic()
            good.drop()
            fab.wait(lambda: reason(fab.status("good-proc")) == "ConnectionLost", 5, "good written")
            latency = time.monotonic() - dropped
            attacker.join(timeout=60)
            assert not attacker.is_alive()
        finally:
            spammer.close()
            good.close()
        marker.flip(bridge)  # after every hostile message: the counts are final
        counted = invalid(bridge)
        writes = fab.ledger.writes(mark)
        events = fab.ledger.event_reasons(mark, exclude=[marker.name])
        warnings = [
            line
            for line in bridge.log_lines()
            if str(line.get("msg", "")).startswith("dropped invalid message")
        ]
        elapsed = time.monotonic() - mark.at
        evil.close()

        delta = {k: counted[k] - counted_before.get(k, 0) for k in counted}
        print(
            f"\n[scenario 5] {sent} hostile messages + 10 MB: invalid counted {delta}; "
            f"a good device's drop written after {latency * 1000:.0f} ms; writes {dict(writes)}; "
            f"{len(warnings)} warning lines"
        )
        assert delta == {
            "invalid_json": expected["invalid_json"],
            "schema": expected["schema"],
            "oversized": expected["oversized"],
            "topic": 0,
            "sequence": 0,
        }
        assert writes == {key("good-proc"): 1, key(marker.name): 1}
        assert events == {("good-proc", "Warning", "ConnectionLost"): 1}
        assert fab.status("victim-proc") == victim_before
        assert fab.status("evil-proc") == evil_before
        assert latency < 2.0
        assert len(warnings) <= LOG_BURST * (1 + int(elapsed // LOG_WINDOW))
        view = bridge.devices()
        assert view["victim"]["state"] == "connected"
        assert view["victim"]["session"] == victim_session
        assert view["evil"]["session"] == evil.session
        assert bridge.get("/healthz")[0] == 200
        assert bridge.alive


def test_a_report_going_back_in_sequence_is_dropped(tmp_path: Path, secret: bytes) -> None:
    """Within one session an agent's reports only move forward (`seq` counts them from 1, and the
    broker keeps one connection's messages in order), so an older `seq` after a newer one is a
    replay: the bridge must drop and count it, not write the old state back."""
    with Fabric.mosquitto(tmp_path, secret, ["evil", "marker"], plane="local") as fab:
        fab.apply(manifest("evil-proc", "evil", ["sleep", "600"]))
        marker = fab.marker()
        bridge = fab.start_bridge()
        evil = Evil(fab)
        try:
            fab.wait_settled("evil-proc")
            bridge.wait_idle()
            before = fab.status("evil-proc")
            counted_before = sum(invalid(bridge).values())
            mark = fab.ledger.mark()
            evil.send_report({key("evil-proc"): entry("Failed", None)}, seq=1)  # a replay
            marker.flip(bridge)
            writes = fab.ledger.writes(mark)
            counted = sum(invalid(bridge).values()) - counted_before
        finally:
            evil.close()
        assert writes == {key(marker.name): 1}, fab.status("evil-proc")
        assert fab.status("evil-proc") == before
        assert counted == 1
