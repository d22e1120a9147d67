"""Tier 1: wire models are strict, errors are precise, encoding is canonical."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from devicefabric.config.errors import PayloadError
from devicefabric.config.resource import (
    MAX_COMMAND_ITEMS,
    MAX_ENV_ITEMS,
    MAX_SPEC_BYTES,
    DeviceProcessSpec,
    Phase,
)
from devicefabric.config.wire import (
    MAX_PAYLOAD_BYTES,
    DesiredProcess,
    Heartbeat,
    StatusOffline,
    StatusOnline,
    decode_bridge_status,
    decode_desired,
    decode_heartbeat,
    decode_report,
    decode_status,
    encode,
    make_desired,
    revision_of,
)


def j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_status_variants() -> None:
    online = decode_status(
        j({"state": "online", "session": "b00t-1", "heartbeat_s": 15, "agent": "0.1.0"})
    )
    assert isinstance(online, StatusOnline)
    assert online.heartbeat_s == 15
    lost = decode_status(j({"state": "offline", "session": "b00t-1", "reason": "lost"}))
    assert isinstance(lost, StatusOffline)
    assert lost.reason == "lost"


@pytest.mark.parametrize(
    ("payload", "reason", "where"),
    [
        (b"{", "invalid_json", ""),
        (b"\xff\xfe", "invalid_json", ""),
        (j({"state": "gone", "session": "s"}), "schema", ""),
        (
            j({"state": "online", "session": "s", "heartbeat_s": "15", "agent": "x"}),
            "schema",
            "heartbeat_s",
        ),
        (
            j({"state": "online", "session": "s", "heartbeat_s": 15, "agent": "x", "extra": 1}),
            "schema",
            "extra",
        ),
        (j({"state": "offline", "session": "s", "reason": "bored"}), "schema", "reason"),
        (j({"state": "offline", "session": "has space", "reason": "lost"}), "schema", "session"),
        (j([1, 2]), "schema", ""),
        (b"0" * (64 * 1024 + 1), "oversized", ""),
    ],
)
def test_status_rejections_are_precise(payload: bytes, reason: str, where: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_status(payload)
    assert info.value.reason == reason
    assert info.value.kind == "status"
    assert where in info.value.detail


OLD_BIRTH = {"state": "online", "session": "b00t-1", "heartbeat_s": 15, "agent": "0.1.0"}
FACTS = {
    "os": "Linux",
    "arch": "x86_64",
    "kernel": "6.1.0-18-amd64",
    "hostname": "edge-7",
    "cpus": 4,
    "memory_bytes": 8 * 2**30,
}


def test_a_birth_without_facts_is_accepted_and_encodes_as_before() -> None:
    online = decode_status(j(OLD_BIRTH))
    assert isinstance(online, StatusOnline)
    assert (online.os, online.arch, online.cpus, online.memory_bytes) == (None, None, None, None)
    assert encode(online) == (
        b'{"agent":"0.1.0","heartbeat_s":15,"session":"b00t-1","state":"online"}'
    )


def test_a_birth_with_every_fact_round_trips() -> None:
    online = decode_status(j({**OLD_BIRTH, **FACTS}))
    assert isinstance(online, StatusOnline)
    assert (online.os, online.arch, online.kernel) == ("Linux", "x86_64", "6.1.0-18-amd64")
    assert (online.hostname, online.cpus, online.memory_bytes) == ("edge-7", 4, 8 * 2**30)
    assert json.loads(encode(online)) == {**OLD_BIRTH, **FACTS}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *list(FACTS.items()),
        ("os", "x" * 64),
        ("arch", ""),
        ("kernel", "k" * 128),
        ("hostname", "h" * 253),
        ("cpus", 65536),
        ("memory_bytes", 0),
        ("memory_bytes", 2**63 - 1),
    ],
)
def test_each_fact_is_optional_on_its_own(field: str, value: object) -> None:
    online = decode_status(j({**OLD_BIRTH, field: value}))
    assert getattr(online, field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("os", 1),
        ("os", ["Linux"]),
        ("os", "x" * 65),
        ("arch", "x" * 65),
        ("arch", True),
        ("kernel", "k" * 129),
        ("hostname", "h" * 254),
        ("hostname", {"name": "edge"}),
        ("cpus", 0),
        ("cpus", -1),
        ("cpus", 65537),
        ("cpus", "4"),
        ("cpus", 4.0),
        ("cpus", True),
        ("memory_bytes", -1),
        ("memory_bytes", 2**63),
        ("memory_bytes", 1.5e9),
        ("memory_bytes", "8G"),
    ],
)
def test_a_bad_fact_refuses_the_birth(field: str, value: object) -> None:
    with pytest.raises(PayloadError) as info:
        decode_status(j({**OLD_BIRTH, **FACTS, field: value}))
    assert (info.value.kind, info.value.reason) == ("status", "schema")
    assert field in info.value.detail


def test_heartbeat_is_strict() -> None:
    assert decode_heartbeat(j({"session": "s-1", "seq": 3})) == Heartbeat(session="s-1", seq=3)
    for bad in ({"session": "s", "seq": -1}, {"session": "s", "seq": 1.5}, {"session": "s"}):
        with pytest.raises(PayloadError, match="schema"):
            decode_heartbeat(j(bad))


def _report(processes: object) -> bytes:
    return j({"session": "s", "seq": 1, "revision": "abc", "processes": processes})


def test_report_keys_and_entries() -> None:
    report = decode_report(
        _report({"default/web": {"generation": 2, "phase": "Running", "pid": 42, "restarts": 0}})
    )
    entry = report.processes["default/web"]
    assert entry.phase == Phase.RUNNING.value
    assert entry.pid == 42
    with pytest.raises(PayloadError, match="processes"):
        decode_report(_report({"no-slash": {"generation": 1, "phase": "Running"}}))
    with pytest.raises(PayloadError, match="phase"):
        decode_report(_report({"default/web": {"generation": 1, "phase": "Dancing"}}))
    huge = {f"default/p{i}": {"generation": 1, "phase": "Running"} for i in range(300)}
    with pytest.raises(PayloadError, match="processes"):
        decode_report(_report(huge))
    with pytest.raises(PayloadError, match="oversized"):
        decode_report(
            _report({"default/web": {"generation": 1, "phase": "Failed", "message": "x" * 70000}})
        )


def _proc(name: str, generation: int = 1, **spec: object) -> DesiredProcess:
    return DesiredProcess(
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        generation=generation,
        spec=DeviceProcessSpec.model_validate({"deviceName": "d1", "command": ["true"], **spec}),
    )


def test_spec_defaults_are_filled_in() -> None:
    wire = _proc("a").spec.to_wire()
    assert wire == {
        "deviceName": "d1",
        "command": ["true"],
        "env": [],
        "restartPolicy": "Always",
        "suspend": False,
        "terminationGracePeriodSeconds": 10,
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"deviceName": "D1", "command": ["x"]}, "deviceName"),
        ({"deviceName": "bridge", "command": ["x"]}, "deviceName"),
        ({"deviceName": "observer", "command": ["x"]}, "deviceName"),
        ({"deviceName": "d1", "command": []}, "command"),
        ({"deviceName": "d1"}, "command"),
        ({"deviceName": "d1", "command": ["x"], "restartPolicy": "Sometimes"}, "restartPolicy"),
        ({"deviceName": "d1", "command": ["x"], "suspend": "yes"}, "suspend"),
        ({"deviceName": "d1", "command": ["x"], "env": [{"name": "A=B", "value": ""}]}, "env"),
        ({"deviceName": "d1", "command": ["x"], "bogus": 1}, "bogus"),
        (
            {"deviceName": "d1", "command": ["x"], "terminationGracePeriodSeconds": -1},
            "terminationGracePeriodSeconds",
        ),
    ],
)
def test_invalid_specs_in_desired_name_the_field(spec: dict[str, object], field: str) -> None:
    doc = {
        "revision": "r",
        "processes": [
            {"namespace": "default", "name": "a", "uid": "u", "generation": 1, "spec": spec}
        ],
    }
    with pytest.raises(PayloadError) as info:
        decode_desired(j(doc))
    assert field in info.value.detail


def test_revision_is_order_independent_and_change_sensitive() -> None:
    a, b = _proc("a"), _proc("b")
    assert revision_of([a, b]) == revision_of([b, a])
    assert revision_of([a, b]) != revision_of([a, _proc("b", generation=2)])
    assert revision_of([a]) != revision_of([a, b])
    assert revision_of([]) == make_desired([]).revision
    desired = make_desired([b, a])
    assert [p.name for p in desired.processes] == ["a", "b"]
    assert decode_desired(encode(desired)) == desired


def test_encoding_is_canonical() -> None:
    payload = encode(StatusOffline(state="offline", session="s-1", reason="shutdown"))
    assert payload == b'{"reason":"shutdown","session":"s-1","state":"offline"}'


def test_bridge_status() -> None:
    assert decode_bridge_status(j({"state": "online", "session": "x"})).state == "online"
    with pytest.raises(PayloadError):
        decode_bridge_status(j({"state": "online"}))


def test_report_keys_follow_the_one_object_key_rule() -> None:
    ok = {"generation": 1, "phase": "Running"}
    for bad in ("ns/a..b", "ns/" + "a" * 254, "NS/a", "ns/-a"):
        with pytest.raises(PayloadError, match="processes"):
            decode_report(_report({bad: ok}))


def test_desired_refuses_duplicate_keys() -> None:
    entry = {"namespace": "default", "name": "a", "uid": "u", "generation": 1}
    spec = {"deviceName": "d1", "command": ["true"]}
    doc = {"revision": "r", "processes": [{**entry, "spec": spec}, {**entry, "spec": spec}]}
    with pytest.raises(PayloadError, match="default/a appears more than once"):
        decode_desired(j(doc))


def test_a_spec_counts_its_size_as_encoded_so_one_resource_always_fits() -> None:
    # 16,000 control characters are 16,000 UTF-8 bytes but 96,000 in the JSON document.
    controls = {"deviceName": "tor9-99", "command": ["\x01" * 4000] * 4}
    with pytest.raises(ValidationError, match="take 96000 bytes together"):
        DeviceProcessSpec.model_validate(controls)
    # The largest spec allowed, in the widest encoding, fits a document alone with room to spare.
    quote = '"' * ((MAX_SPEC_BYTES - 1024) // 2 // MAX_COMMAND_ITEMS)  # 2 bytes encoded
    widest = {
        "deviceName": "d" * 63,
        "command": [quote] * MAX_COMMAND_ITEMS,
        "env": [{"name": "N", "value": ""}] * (MAX_ENV_ITEMS - 1),
        "workingDir": "w" * 100,
    }
    spec = DeviceProcessSpec.model_validate(widest)
    process = DesiredProcess(
        namespace="n" * 63, name="x" * 253, uid="u" * 128, generation=2**63 - 1, spec=spec
    )
    assert len(encode(make_desired([process]))) < MAX_PAYLOAD_BYTES * 0.7
