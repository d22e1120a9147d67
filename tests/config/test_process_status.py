"""The process status has one definition (`lean.ProcessStatus`); every other form agrees with it.

One table row per field: the attribute, its key in a report entry, its field in a DeviceProcess's
status, its JSON type, and whether a report must carry it. Each form is held to the table: the
derived spellings (`lean.PROCESS_FIELDS`), the agent's encoder, the bridge's pydantic decoder
(`wire.ProcessReport`), the status model (`resource.DeviceProcessStatus`), the bridge's copy from a
report into a status (`statuses.PROCESS_FIELDS`), and the CRD's status schema.
"""

from __future__ import annotations

import json
from typing import Any, Final

import pytest
import yaml
from pydantic import BaseModel

from devicefabric.bridge import statuses
from devicefabric.config import deploybundle, lean, wire
from devicefabric.config.resource import DeviceProcessStatus

# (attribute, report key, status field, JSON type, required in a report)
TABLE: Final = (
    ("generation", "generation", "observedGeneration", "integer", True),
    ("phase", "phase", "phase", "string", True),
    ("pid", "pid", "pid", "integer", False),
    ("restarts", "restarts", "restarts", "integer", False),
    ("exit_code", "exitCode", "exitCode", "integer", False),
    ("started_at", "startedAt", "startedAt", "string", False),
    ("message", "message", "message", "string", False),
)
FULL: Final = lean.ProcessStatus(
    generation=4,
    phase="CrashLoopBackOff",
    pid=42,
    restarts=3,
    exit_code=137,
    started_at="2026-01-01T00:00:00Z",
    message="exited with 137",
)


def _crd_status() -> dict[str, Any]:
    """The DeviceProcess CRD's `status` properties."""
    (crd,) = [
        d
        for d in yaml.safe_load_all(deploybundle.read(deploybundle.CRD))
        if d and d["spec"]["names"]["kind"] == "DeviceProcess"
    ]
    properties: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["status"]["properties"]
    return properties


def _json_type(model: type[BaseModel], alias: str) -> str:
    """The JSON type of one property, `X | None` reduced to X."""
    node: dict[str, Any] = model.model_json_schema(by_alias=True)["properties"][alias]
    (branch,) = [b for b in node.get("anyOf", [node]) if b.get("type") != "null"]
    return str(branch["type"])


def test_the_derived_spellings_are_the_table() -> None:
    derived = [(f.name, f.wire, f.status, f.required) for f in lean.PROCESS_FIELDS]
    assert derived == [(name, key, status, req) for name, key, status, _, req in TABLE]


@pytest.mark.parametrize(("name", "key", "status", "json_type", "required"), TABLE)
def test_every_form_spells_and_types_the_field_as_the_table(
    name: str, key: str, status: str, json_type: str, required: bool
) -> None:
    report_field = wire.ProcessReport.model_fields[name]
    assert report_field.alias == key
    assert report_field.is_required() is required
    assert _json_type(wire.ProcessReport, key) == json_type
    (status_name,) = [f.status_name for f in lean.PROCESS_FIELDS if f.name == name]
    status_field = DeviceProcessStatus.model_fields[status_name]
    assert status_field.alias == status
    assert not status_field.is_required()
    assert _json_type(DeviceProcessStatus, status) == json_type
    assert _crd_status()[status]["type"] == json_type
    assert statuses.PROCESS_FIELDS[name] == status
    assert FULL.to_wire()[key] == getattr(FULL, name)


def test_the_forms_hold_the_same_fields_and_nothing_else() -> None:
    names = [row[0] for row in TABLE]
    assert list(wire.ProcessReport.model_fields) == names
    assert set(DeviceProcessStatus.model_fields) == {f.status_name for f in lean.PROCESS_FIELDS} | {
        "conditions"
    }
    assert list(statuses.PROCESS_FIELDS) == names


def test_the_agent_encodes_an_entry_as_the_bridge_decodes_it() -> None:
    for state in (FULL, lean.ProcessStatus(generation=0, phase="Pending")):
        decoded = wire.ProcessReport.model_validate_json(json.dumps(state.to_wire()))
        assert {f.name: getattr(decoded, f.name) for f in lean.PROCESS_FIELDS} == {
            f.name: getattr(state, f.name) for f in lean.PROCESS_FIELDS
        }
        assert json.loads(wire.encode(decoded)) == state.to_wire()


def test_a_report_entry_written_again_with_another_field_is_refused_at_import() -> None:
    class Drifted(BaseModel):
        generation: int
        phase: str
        pid: int | None = None

    with pytest.raises(TypeError, match=r"differs from lean\.ProcessStatus"):
        wire._same_fields(Drifted)
