"""The agent's pydantic-free codec agrees with the pydantic wire models, value for value.

`lean.decode_desired` must accept exactly what `wire.decode_desired` accepts (same defaults, same
canonical bytes out) and refuse exactly what it refuses, with the same reason; the encoders must
write what the wire models write. Documents come from the contract's strategies: valid ones,
valid ones with hostile edits (`mutated_payloads`), and any JSON at all.
"""

from __future__ import annotations

import json
from typing import Any, Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from devicefabric.config import lean, wire
from devicefabric.config.errors import PayloadError
from tests.faults import strategies as fs
from tests.faults.budget import FUZZ
from tests.support.codecs import reencoded


def _pydantic(payload: bytes) -> bytes | str:
    return reencoded(wire.decode_desired, wire.encode, payload)


def _lean(payload: bytes) -> bytes | str:
    return reencoded(lean.decode_desired, lean.encode_desired, payload)


def _agree(payload: bytes) -> None:
    assert _lean(payload) == _pydantic(payload), payload[:400]


def _status_agrees(payload: bytes) -> None:
    """Both codecs read the same (state, session) from a status payload, or refuse it alike."""
    try:
        model = wire.decode_status(payload)
    except PayloadError as exc:
        expected: tuple[str, str] | str = exc.reason
    else:
        expected = (model.state, model.session)
    ours = lean.decode_status(payload)
    assert (ours.reason if isinstance(ours, PayloadError) else ours) == expected


def _spec(**fields: Any) -> bytes:
    spec = {"deviceName": "dev-1", "command": ["/bin/true"], **fields}
    proc = {"namespace": "ns", "name": "a", "uid": "u", "generation": 1, "spec": spec}
    return json.dumps({"revision": "r1", "processes": [proc]}).encode()


TABLE = [
    _spec(),
    _spec(device_name="dev-1", deviceName="dev-1"),  # an alias and its field name
    _spec(working_dir="/tmp"),
    _spec(workingDir=None),
    _spec(suspend=1),
    _spec(terminationGracePeriodSeconds=True),
    _spec(terminationGracePeriodSeconds=10.0),
    _spec(terminationGracePeriodSeconds=3601),
    _spec(restartPolicy="always"),
    _spec(deviceName="bridge"),
    _spec(deviceName="dev-1\n"),
    _spec(command=[]),
    _spec(command=["a\x00b"]),
    _spec(env=[{"name": "A=B"}]),
    _spec(env=[{"name": "A", "value": None}]),
    _spec(env=[{"name": "A", "extra": 1}]),
    _spec(extra=1),
    b'{"revision": "r1", "processes": []}',
    b'{"revision": "r1", "processes": [], "revision": "r2"}',
    b'{"revision": "", "processes": []}',
    b'{"revision": "r1", "processes": {}}',
    b'{"revision": "r1"}',
    b'{"revision": "r1", "processes": [], "x": NaN}',
    b'{"revision": "\\ud800", "processes": []}',
    b'{"revision": "r1", "processes": []} trailing',
    b'{"revision": ' + b"[" * 199 + b"1" + b"]" * 199 + b', "processes": []}',
    b'{"revision": ' + b"[" * 200 + b"1" + b"]" * 200 + b', "processes": []}',
    b'{"revision": ' + b"[" * 200 + b"]" * 200 + b', "processes": []}',
    b"[" * 5000 + b"]" * 5000,
    b'{"revision": "\\ud83d\\ude00", "processes": []}',
    b"\xef\xbb\xbf{}",
    b"\xff",
    b"[]",
    b"null",
    b"",
    b"x" * (64 * 1024 + 1),
]


@pytest.mark.parametrize("payload", TABLE)
def test_edge_documents_agree(payload: bytes) -> None:
    _agree(payload)


def test_a_key_twice_is_refused_by_both() -> None:
    doc = json.loads(_spec())
    doc["processes"].append(doc["processes"][0])
    _agree(json.dumps(doc).encode())
    assert _lean(json.dumps(doc).encode()) == "schema"


@FUZZ
@given(fs.desired_docs())
def test_valid_documents_decode_to_the_same_canonical_bytes(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc, ensure_ascii=False).encode()
    assert isinstance(_pydantic(payload), bytes)
    _agree(payload)


@FUZZ
@given(fs.mutated_payloads(fs.desired_docs()))
@example(_spec(env=[{"name": "A"}], suspend=False))
def test_mutated_documents_are_refused_or_accepted_alike(payload: bytes) -> None:
    _agree(payload)


@FUZZ
@given(st.one_of(fs.json_values(), fs.status_docs()))
def test_any_json_and_status_documents_agree(value: Any) -> None:
    payload = fs.json_bytes(value)
    _agree(payload)
    _status_agrees(payload)


def _birth(**facts: object) -> bytes:
    doc = {"state": "online", "session": "s1", "heartbeat_s": 15, "agent": "0.1.0", **facts}
    return json.dumps(doc).encode()


FACTS: Final = {
    "os": "Linux",
    "arch": "x86_64",
    "kernel": "6.1.0-18-amd64",
    "hostname": "edge-7",
    "cpus": 4,
    "memory_bytes": 2**33,
}
BAD_STRINGS: Final[tuple[object, ...]] = (1, True, [], {})
BAD_INTS: Final[tuple[object, ...]] = (2**64, True, 4.0, "4", {})
BIRTHS = [
    _birth(),
    _birth(**FACTS),
    *(_birth(**{field: value}) for field, value in FACTS.items()),
    *(_birth(**{field: None}) for field in FACTS),
    *(
        _birth(**{field: value})
        for field, longest in lean.FACT_STRINGS
        for value in ("", "x" * longest, "x" * (longest + 1), "\U0001f600" * longest, *BAD_STRINGS)
    ),
    *(
        _birth(**{field: value})
        for field, lo, hi in lean.FACT_INTS
        for value in (lo, hi, lo - 1, hi + 1, *BAD_INTS)
    ),
    _birth(**FACTS, memory=1),
]


@pytest.mark.parametrize("payload", BIRTHS)
def test_births_with_facts_agree(payload: bytes) -> None:
    _status_agrees(payload)


def test_a_birth_without_facts_encodes_as_before() -> None:
    assert lean.encode_online("s1", 15, "0.1.0") == (
        b'{"agent":"0.1.0","heartbeat_s":15,"session":"s1","state":"online"}'
    )
    assert json.loads(lean.encode_online("s1", 15, "0.1.0", arch="aarch64", cpus=8)) == {
        "state": "online",
        "session": "s1",
        "heartbeat_s": 15,
        "agent": "0.1.0",
        "arch": "aarch64",
        "cpus": 8,
    }


@FUZZ
@given(fs.status_docs(), fs.heartbeat_docs(), fs.report_docs())
def test_encoders_write_what_the_wire_models_write(
    status: dict[str, Any], beat: dict[str, Any], report: dict[str, Any]
) -> None:
    model = wire.decode_status(json.dumps(status).encode())
    if isinstance(model, wire.StatusOnline):
        facts = {field: getattr(model, field) for field in FACTS}  # os, arch, ... memory_bytes
        ours = lean.encode_online(model.session, model.heartbeat_s, model.agent, **facts)
    else:
        ours = lean.encode_offline(model.session, model.reason)
    assert ours == wire.encode(model)
    hb = wire.decode_heartbeat(json.dumps(beat).encode())
    assert lean.encode_heartbeat(hb.session, hb.seq) == wire.encode(hb)
    rep = wire.decode_report(json.dumps(report).encode())
    entries = {
        key: lean.ProcessStatus(
            **{f.name: getattr(p, f.name) for f in lean.PROCESS_FIELDS}
        ).to_wire()
        for key, p in rep.processes.items()
    }
    assert lean.encode_report(rep.session, rep.seq, rep.revision, entries) == wire.encode(rep)
