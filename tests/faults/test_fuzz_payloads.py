"""Scenario 8, payloads and models: no hostile document gets past the validation layer unexplained.

Every `decode_*` is fed arbitrary bytes, arbitrary JSON values, and valid documents mutated the way
a hostile device would (fields dropped or added, types changed, huge strings and integers, deep
nesting, duplicate keys, truncation). The invariants, on every example:

- a rejection is a `PayloadError` and nothing else, for the right topic kind, with a `reason` in
  {oversized, invalid_json, schema} and a non-empty `detail`; oversized means over the limit;
- an accepted document survives the fabric's own round trip (`encode` then decode gives the same
  model), and its integers fit the int64 Kubernetes stores, so whatever a component accepts it
  can also pass on;
- every valid document the contract describes is accepted (the parsers are not stricter than
  DESIGN.md).

The same holds for the resource models on arbitrary dicts (`pydantic.ValidationError` only, each
error with a message), and the desired `revision` is a digest of the process *set*.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from devicefabric.config import wire
from devicefabric.config.errors import PayloadError
from devicefabric.config.names import is_device_name
from devicefabric.config.resource import (
    Condition,
    DeviceProcessSpec,
    DeviceProcessStatus,
    EnvVar,
)
from devicefabric.config.wire import (
    BridgeStatus,
    Desired,
    DesiredProcess,
    Heartbeat,
    ProcessReport,
    Report,
    StatusOffline,
    StatusOnline,
)
from tests.faults.budget import FUZZ, MARKS, outcome
from tests.faults.strategies import (
    bridge_status_docs,
    desired_docs,
    heartbeat_docs,
    hostile_names,
    json_bytes,
    json_values,
    mutated_payloads,
    report_docs,
    spec_docs,
    status_docs,
)

pytestmark = list(MARKS)

Decoder = Callable[..., BaseModel]
REASONS: Final = frozenset({"oversized", "invalid_json", "schema"})
INT64: Final = range(-(2**63), 2**63)

# kind (as PayloadError.kind names it), decoder, strategy of valid documents
TARGETS: Final = (
    pytest.param("status", wire.decode_status, status_docs(), id="status"),
    pytest.param("heartbeat", wire.decode_heartbeat, heartbeat_docs(), id="heartbeat"),
    pytest.param("report", wire.decode_report, report_docs(), id="report"),
    pytest.param("desired", wire.decode_desired, desired_docs(), id="desired"),
    pytest.param(
        "bridge_status", wire.decode_bridge_status, bridge_status_docs(), id="bridge_status"
    ),
)


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        return [i for item in value.values() for i in _ints(item)]
    if isinstance(value, list):
        return [i for item in value for i in _ints(item)]
    return []


def check_decode(
    kind: str, decoder: Decoder, payload: bytes, limit: int = wire.MAX_PAYLOAD_BYTES
) -> str:
    """Decode `payload`; assert the invariants either way; return the outcome (reason or "ok")."""
    model = outcome(lambda: decoder(payload, limit), PayloadError)
    if isinstance(model, PayloadError):
        assert model.kind == kind
        assert model.reason in REASONS, model.reason
        assert model.detail.strip(), "a rejection without a detail"
        assert (model.reason == "oversized") == (len(payload) > limit), (model.reason, len(payload))
        assert str(model), "a rejection without a message"
        return model.reason
    assert len(payload) <= limit
    again = decoder(wire.encode(model))
    assert again == model, "an accepted document does not survive encode -> decode"
    dumped = model.model_dump(mode="json", by_alias=True)
    assert all(i in INT64 for i in _ints(dumped)), "an integer Kubernetes cannot store was accepted"
    if isinstance(model, Report):
        for entry in model.processes.values():
            assert entry.started_at is None or _is_date_time(entry.started_at), entry.started_at
    return "ok"


def _is_date_time(text: str) -> bool:
    """What the CRD's `format: date-time` (RFC 3339) lets the bridge write into `startedAt`."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return False
    return "T" in text and moment.tzinfo is not None


DECODERS: Final = (
    ("status", wire.decode_status),
    ("heartbeat", wire.decode_heartbeat),
    ("report", wire.decode_report),
    ("desired", wire.decode_desired),
    ("bridge_status", wire.decode_bridge_status),
)
MODELS: Final = (
    DeviceProcessSpec,
    DeviceProcessStatus,
    Condition,
    EnvVar,
    StatusOnline,
    StatusOffline,
    Heartbeat,
    ProcessReport,
    Report,
    DesiredProcess,
    Desired,
    BridgeStatus,
)


def check_model(model: type[BaseModel], data: Any) -> BaseModel | None:
    """`model_validate` raises only `ValidationError`, with messages; accepted ones round-trip."""
    parsed = outcome(lambda: model.model_validate(data), ValidationError)
    if isinstance(parsed, ValidationError):
        errors = parsed.errors(include_url=False)
        assert errors
        assert all(error["msg"] for error in errors)
        return None
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert model.model_validate_json(json.dumps(dumped)) == parsed
    return parsed


@FUZZ
@given(payload=st.binary(max_size=256), limit=st.sampled_from([wire.MAX_PAYLOAD_BYTES, 16]))
def test_arbitrary_bytes_are_rejected_with_a_reason(payload: bytes, limit: int) -> None:
    for kind, decoder in DECODERS:
        check_decode(kind, decoder, payload, limit)


@FUZZ
@given(value=json_values() | st.dictionaries(st.text(max_size=20), json_values(6), max_size=8))
def test_arbitrary_json_values_for_every_decoder_and_model(value: Any) -> None:
    """Each example goes through every decoder (as bytes) and every model (as a Python value)."""
    payload = json_bytes(value)
    for kind, decoder in DECODERS:
        check_decode(kind, decoder, payload)
    for model in MODELS:
        check_model(model, value)


@pytest.mark.parametrize(("kind", "decoder", "valid"), TARGETS)
def test_valid_documents_are_accepted_and_mutated_ones_accepted_whole_or_rejected(
    kind: str, decoder: Decoder, valid: st.SearchStrategy[dict[str, Any]]
) -> None:
    seen: set[str] = set()

    @FUZZ
    @given(doc=valid, data=st.data())
    def fuzz(doc: dict[str, Any], data: st.DataObject) -> None:
        assert check_decode(kind, decoder, json_bytes(doc)) == "ok", doc
        seen.add(check_decode(kind, decoder, data.draw(mutated_payloads(st.just(doc)))))

    fuzz()
    # The mutations reach past the JSON parser into the schema (the fuzzing is not all noise).
    assert "schema" in seen, seen


@FUZZ
@given(spec=spec_docs(), payload=st.data())
def test_device_process_spec_accepts_the_contract_and_only_valid_device_names(
    spec: dict[str, Any], payload: st.DataObject
) -> None:
    parsed = check_model(DeviceProcessSpec, spec)
    assert isinstance(parsed, DeviceProcessSpec), spec
    wire = parsed.to_wire()
    assert set(wire) >= {"deviceName", "command", "restartPolicy", "suspend"}, "defaults missing"
    # The same spec with a hostile deviceName is refused, whatever else it holds.
    bad = payload.draw(
        hostile_names() | st.text(max_size=70).filter(lambda n: not is_device_name(n))
    )
    hostile = check_model(DeviceProcessSpec, {**spec, "deviceName": bad})
    assert hostile is None, bad


@FUZZ
@given(spec=spec_docs(), mutated=st.data())
def test_device_process_spec_on_mutated_specs(spec: dict[str, Any], mutated: st.DataObject) -> None:
    raw = mutated.draw(mutated_payloads(st.just(spec)))
    parsed = outcome(lambda: DeviceProcessSpec.model_validate_json(raw), ValidationError)
    if isinstance(parsed, ValidationError):
        assert all(error["msg"] for error in parsed.errors(include_url=False))
        return
    assert is_device_name(parsed.device_name), parsed.device_name
    assert parsed.command, "a spec without a command was accepted"
    assert DeviceProcessSpec.model_validate(parsed.to_wire()) == parsed


@FUZZ
@given(doc=desired_docs(), order=st.randoms(use_true_random=False))
def test_the_desired_revision_is_a_digest_of_the_process_set(
    doc: dict[str, Any], order: Any
) -> None:
    processes = wire.decode_desired(json_bytes(doc)).processes
    shuffled = list(processes)
    order.shuffle(shuffled)
    assert wire.revision_of(list(processes)) == wire.revision_of(shuffled)
    assert wire.make_desired(shuffled) == wire.make_desired(list(processes))
    again = wire.decode_desired(wire.encode(wire.make_desired(shuffled)))
    assert again == wire.make_desired(list(processes))
