"""Reports: published on a change of the picture, never twice for the same one; seq per session."""

from __future__ import annotations

import json

from devicefabric.agent.reporting import ReportBook
from devicefabric.config.lean import ProcessStatus
from devicefabric.config.wire import decode_report, encode

RUNNING = ProcessStatus(generation=1, phase="Running", pid=42, started_at="2026-01-01T00:00:00Z")


def test_same_picture_twice_is_one_report() -> None:
    book = ReportBook()
    first = book.next("s-1", "rev1", {"ns/a": RUNNING})
    assert first is not None
    assert first.seq == 1
    assert book.next("s-1", "rev1", {"ns/a": RUNNING}) is None


def test_every_change_is_a_report_with_the_next_seq() -> None:
    book = ReportBook()
    book.next("s-1", "rev1", {"ns/a": RUNNING})
    crashed = ProcessStatus(generation=1, phase="CrashLoopBackOff", exit_code=1, message="x")
    second = book.next("s-1", "rev1", {"ns/a": crashed})
    assert second is not None
    assert second.seq == 2
    third = book.next("s-1", "rev2", {"ns/a": crashed})  # a new document, same states
    assert third is not None
    assert third.seq == 3


def test_a_new_session_always_gets_a_report_numbered_from_one() -> None:
    book = ReportBook()
    book.next("s-1", "rev1", {"ns/a": RUNNING})
    book.next("s-1", "rev1", {"ns/b": RUNNING})
    again = book.next("s-2", "rev1", {"ns/b": RUNNING})
    assert again is not None
    assert (again.session, again.seq) == ("s-2", 1)


def test_wire_form_matches_the_contract() -> None:
    book = ReportBook()
    report = book.next("abc-1", "r1", {"ns/b": RUNNING, "ns/a": ProcessStatus(3, "Stopped")})
    assert report is not None
    payload = report.encode()
    doc = json.loads(payload)
    assert doc == {
        "session": "abc-1",
        "seq": 1,
        "revision": "r1",
        "processes": {
            "ns/a": {"generation": 3, "phase": "Stopped", "restarts": 0},
            "ns/b": {
                "generation": 1,
                "phase": "Running",
                "pid": 42,
                "restarts": 0,
                "startedAt": "2026-01-01T00:00:00Z",
            },
        },
    }
    assert encode(decode_report(payload)) == payload  # the contract model agrees
