"""The agent's wire codec without pydantic: strict `desired` decoding and canonical encoding.

The device agent must stay small (pydantic alone costs more memory than the rest of the agent),
so it decodes and encodes its own documents here with plain Python. Invariant: `decode_desired`
accepts and refuses exactly what `wire.decode_desired` (the pydantic `Desired` model, strict,
`extra="forbid"`) accepts and refuses, fills in the same defaults, and encodes to the same
canonical bytes; a property test holds the two to that. Limits and patterns come from
`config.names` and the constants below, which the pydantic models use too; the checks and the
parser are `config.strictjson`'s. Errors are `PayloadError` (`oversized`, `invalid_json`,
`schema`) and nothing else.

`ProcessStatus` is the one definition of a process's reported state (see its docstring).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, fields
from typing import Final, Literal, TypedDict

from devicefabric.config.errors import PayloadError
from devicefabric.config.names import (
    DEVICE_NAME_PATTERN,
    MAX_OBJECT_NAME,
    OBJECT_NAME_PATTERN,
    RESERVED_NAMES,
)
from devicefabric.config.strictjson import (
    SchemaError,
    canonical_json,
    check_int,
    check_list,
    check_object,
    check_str,
    decode_with,
)

# -- limits shared with the pydantic models (config.resource, config.wire) ----------------------
MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_PROCESSES: Final = 256
MAX_COMMAND_ITEMS: Final = 256
MAX_ARG_LENGTH: Final = 4096
MAX_ENV_ITEMS: Final = 256
MAX_ENV_NAME: Final = 256
MAX_MESSAGE: Final = 1024
# The bytes command, env and workingDir take together in the desired document (UTF-8 inside JSON
# strings, escapes included: a control character costs 6 bytes): one resource alone must fit in
# its device's desired document (64 KiB) with room for others; more makes the spec invalid. (The
# CRD bounds each item; a total is not expressible there, so the bridge checks it as `InvalidSpec`.)
# With the item counts bounded, one spec is at most 32 KiB + 256 x 3 (`"",` per argument) +
# 256 x 23 (`{"name":"","value":""},` per variable) + < 1 KiB of keys and metadata: < 41 KiB.
MAX_SPEC_BYTES: Final = 32 * 1024
MAX_UID: Final = 128
MAX_TOKEN: Final = 64  # session ids and revisions
MAX_GRACE_S: Final = 3600
SESSION_PATTERN: Final = r"^[A-Za-z0-9_.:-]+$"
REVISION_PATTERN: Final = r"^[A-Za-z0-9:]+$"
ENV_NAME_PATTERN: Final = r"^[^=\x00]+$"
ARG_PATTERN: Final = r"^[^\x00]*$"
INT63: Final = 2**63
# Device facts in the agent's birth (all optional; `config.fleet.FACT_FIELDS` names them).
MAX_FACT_OS: Final = 64  # `os` and `arch`
MAX_FACT_KERNEL: Final = 128
MAX_FACT_HOSTNAME: Final = 253
MAX_FACT_CPUS: Final = 65536
FACT_STRINGS: Final = (
    ("os", MAX_FACT_OS),
    ("arch", MAX_FACT_OS),
    ("kernel", MAX_FACT_KERNEL),
    ("hostname", MAX_FACT_HOSTNAME),
)
"""(birth field, longest value in characters) of each string fact."""
FACT_INTS: Final = (("cpus", 1, MAX_FACT_CPUS), ("memory_bytes", 0, INT63 - 1))
"""(birth field, least, greatest) of each integer fact."""


class BirthFacts(TypedDict, total=False):
    """The device facts an agent puts in its birth (`encode_online(..., **facts)`)."""

    os: str
    arch: str
    kernel: str
    hostname: str
    cpus: int
    memory_bytes: int


PhaseName = Literal[
    "Pending", "Running", "Succeeded", "Failed", "Stopped", "CrashLoopBackOff", "Unknown"
]
RestartPolicyName = Literal["Always", "OnFailure", "Never"]
RESTART_POLICIES: Final = ("Always", "OnFailure", "Never")

_DEVICE_RE: Final = re.compile(DEVICE_NAME_PATTERN)
_OBJECT_RE: Final = re.compile(OBJECT_NAME_PATTERN)
_REVISION_RE: Final = re.compile(REVISION_PATTERN)
_ENV_NAME_RE: Final = re.compile(ENV_NAME_PATTERN)
_ARG_RE: Final = re.compile(ARG_PATTERN)


def _encoded(text: str) -> int:
    """Bytes `text` takes inside a JSON string of the desired document (escapes included)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def spec_bytes(
    command: Iterable[str], env: Iterable[tuple[str, str]], working_dir: str | None
) -> int:
    """What `MAX_SPEC_BYTES` bounds (the pydantic model and the agent's decoder share it)."""
    size = sum(_encoded(arg) for arg in command)
    size += sum(_encoded(name) + _encoded(value) for name, value in env)
    return size + _encoded(working_dir or "")


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """A decoded `spec` (the attributes of `resource.DeviceProcessSpec`, defaults filled in)."""

    device_name: str
    command: tuple[str, ...]
    env: tuple[EnvVar, ...] = ()
    working_dir: str | None = None
    restart_policy: RestartPolicyName = "Always"
    suspend: bool = False
    termination_grace_period_seconds: int = 10

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {
            "deviceName": self.device_name,
            "command": list(self.command),
            "env": [{"name": e.name, "value": e.value} for e in self.env],
            "restartPolicy": self.restart_policy,
            "suspend": self.suspend,
            "terminationGracePeriodSeconds": self.termination_grace_period_seconds,
        }
        if self.working_dir is not None:
            out["workingDir"] = self.working_dir
        return out


@dataclass(frozen=True, slots=True)
class DesiredProcess:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: ProcessSpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Desired:
    revision: str
    processes: tuple[DesiredProcess, ...]

    def to_wire(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "processes": [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "uid": p.uid,
                    "generation": p.generation,
                    "spec": p.spec.to_wire(),
                }
                for p in self.processes
            ],
        }


# -- the process status: one definition ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """The observed state of one process, as the agent reports it under its key.

    The one definition of the seven process fields: `PROCESS_FIELDS` derives their spellings from
    it, the agent keeps it per process and encodes it with `to_wire`, `wire.ProcessReport` (the
    bridge's strict decoder) is checked against it when imported, `resource.DeviceProcessStatus`
    is generated from it, and the bridge copies a report entry into a status through the table.
    """

    generation: int
    phase: PhaseName
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    started_at: str | None = None
    message: str | None = None

    def to_wire(self) -> dict[str, object]:
        """One `processes` entry of a report: camelCase, no nulls."""
        return {
            f.wire: value for f in PROCESS_FIELDS if (value := getattr(self, f.name)) is not None
        }


def camel(name: str) -> str:
    """`exit_code` -> `exitCode`: how every camelCase field of the fabric is spelled."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True, slots=True)
class ProcessField:
    """One field of `ProcessStatus` in each of its spellings."""

    name: str  # the attribute of `ProcessStatus` and `wire.ProcessReport`
    wire: str  # the key in a report's `processes` entry
    status_name: str  # the attribute of `resource.DeviceProcessStatus`
    status: str  # the field of a DeviceProcess's `status`
    required: bool  # in a report (in a status every field is optional)
    default: object  # in a report, when not required


# A status says which generation it observed; a report entry says which generation it runs.
_STATUS_NAMES: Final = {"generation": "observed_generation"}
PROCESS_FIELDS: Final = tuple(
    ProcessField(
        name=f.name,
        wire=camel(f.name),
        status_name=_STATUS_NAMES.get(f.name, f.name),
        status=camel(_STATUS_NAMES.get(f.name, f.name)),
        required=f.default is MISSING,
        default=None if f.default is MISSING else f.default,
    )
    for f in fields(ProcessStatus)
)
"""The process fields in declaration order, derived from `ProcessStatus`."""


# -- encoding ----------------------------------------------------------------------------------
def encode_desired(doc: Desired) -> bytes:
    return canonical_json(doc.to_wire())


def encode_online(
    session: str,
    heartbeat_s: int,
    agent: str,
    *,
    os: str | None = None,
    arch: str | None = None,
    kernel: str | None = None,
    hostname: str | None = None,
    cpus: int | None = None,
    memory_bytes: int | None = None,
) -> bytes:
    """The birth; each device fact only when given (a birth without facts is the old one)."""
    doc: dict[str, object] = {
        "state": "online",
        "session": session,
        "heartbeat_s": heartbeat_s,
        "agent": agent,
    }
    facts = {
        "os": os,
        "arch": arch,
        "kernel": kernel,
        "hostname": hostname,
        "cpus": cpus,
        "memory_bytes": memory_bytes,
    }
    doc.update((k, v) for k, v in facts.items() if v is not None)
    return canonical_json(doc)


def encode_offline(session: str, reason: Literal["lost", "shutdown"]) -> bytes:
    return canonical_json({"state": "offline", "session": session, "reason": reason})


def encode_heartbeat(session: str, seq: int) -> bytes:
    return canonical_json({"session": session, "seq": seq})


def encode_report(
    session: str, seq: int, revision: str, processes: dict[str, dict[str, object]]
) -> bytes:
    return canonical_json(
        {"session": session, "seq": seq, "revision": revision, "processes": processes}
    )


# -- decoding ----------------------------------------------------------------------------------
_SPEC_FIELDS: Final = {
    alias: field
    for field, alias in (
        ("device_name", "deviceName"),
        ("command", "command"),
        ("env", "env"),
        ("working_dir", "workingDir"),
        ("restart_policy", "restartPolicy"),
        ("suspend", "suspend"),
        ("termination_grace_period_seconds", "terminationGracePeriodSeconds"),
    )
    for alias in (field, alias)
}


def _env(value: object, loc: str) -> EnvVar:
    raw = check_object(value, loc, {"name": "name", "value": "value"}, ("name",))
    name = check_str(raw["name"], f"{loc}.name", _ENV_NAME_RE, 1, MAX_ENV_NAME)
    val = check_str(raw.get("value", ""), f"{loc}.value", _ARG_RE, 0, MAX_ARG_LENGTH)
    return EnvVar(name, val)


def _spec(value: object, loc: str) -> ProcessSpec:
    raw = check_object(value, loc, _SPEC_FIELDS, ("device_name", "command"))
    device = check_str(raw["device_name"], f"{loc}.deviceName", _DEVICE_RE, 0, 63)
    if device in RESERVED_NAMES:
        raise SchemaError(
            f"{loc}.deviceName", f"'{device}' is reserved for the fabric's own role users"
        )
    command = check_list(raw["command"], f"{loc}.command", 1, MAX_COMMAND_ITEMS)
    args = tuple(
        check_str(a, f"{loc}.command.{i}", _ARG_RE, 0, MAX_ARG_LENGTH)
        for i, a in enumerate(command)
    )
    env_raw = check_list(raw.get("env", []), f"{loc}.env", 0, MAX_ENV_ITEMS)
    env = tuple(_env(e, f"{loc}.env.{i}") for i, e in enumerate(env_raw))
    wd = raw.get("working_dir")
    working_dir = (
        None if wd is None else check_str(wd, f"{loc}.workingDir", _ARG_RE, 0, MAX_ARG_LENGTH)
    )
    policy = raw.get("restart_policy", "Always")
    if type(policy) is not str or policy not in RESTART_POLICIES:
        raise SchemaError(
            f"{loc}.restartPolicy", "Input should be 'Always', 'OnFailure' or 'Never'"
        )
    suspend = raw.get("suspend", False)
    if type(suspend) is not bool:
        raise SchemaError(f"{loc}.suspend", "Input should be a valid boolean")
    grace = check_int(
        raw.get("termination_grace_period_seconds", 10),
        f"{loc}.terminationGracePeriodSeconds",
        0,
        MAX_GRACE_S,
    )
    size = spec_bytes(args, [(e.name, e.value) for e in env], working_dir)
    if size > MAX_SPEC_BYTES:
        raise SchemaError(
            loc, f"command, env and workingDir take {size} bytes together; at most {MAX_SPEC_BYTES}"
        )
    return ProcessSpec(device, args, env, working_dir, policy, suspend, grace)  # type: ignore[arg-type]


_PROCESS_FIELDS: Final = {k: k for k in ("namespace", "name", "uid", "generation", "spec")}


def _process(value: object, loc: str) -> DesiredProcess:
    raw = check_object(value, loc, _PROCESS_FIELDS, tuple(_PROCESS_FIELDS))
    return DesiredProcess(
        namespace=check_str(raw["namespace"], f"{loc}.namespace", _DEVICE_RE, 0, 63),
        name=check_str(raw["name"], f"{loc}.name", _OBJECT_RE, 0, MAX_OBJECT_NAME),
        uid=check_str(raw["uid"], f"{loc}.uid", None, 1, MAX_UID),
        generation=check_int(raw["generation"], f"{loc}.generation", 0, INT63 - 1),
        spec=_spec(raw["spec"], f"{loc}.spec"),
    )


def _desired(value: object) -> Desired:
    raw = check_object(
        value, "", {"revision": "revision", "processes": "processes"}, ("revision", "processes")
    )
    revision = check_str(raw["revision"], "revision", _REVISION_RE, 1, MAX_TOKEN)
    items = check_list(raw["processes"], "processes", 0, MAX_PROCESSES)
    processes = tuple(_process(p, f"processes.{i}") for i, p in enumerate(items))
    seen: set[str] = set()
    for proc in processes:
        if proc.key in seen:
            raise SchemaError(
                "<root>", f"Value error, processes: {proc.key} appears more than once"
            )
        seen.add(proc.key)
    return Desired(revision, processes)


def decode_desired(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Desired:
    """Decode a `desired` document; `PayloadError` (and nothing else) when it is not one."""
    return decode_with("desired", payload, limit, _desired)


_SESSION_RE: Final = re.compile(SESSION_PATTERN)
_ONLINE_REQUIRED: Final = ("state", "session", "heartbeat_s", "agent")
_ONLINE_FIELDS: Final = {
    k: k for k in (*_ONLINE_REQUIRED, *(f for f, _ in FACT_STRINGS), *(f for f, _, _ in FACT_INTS))
}


def _status(doc: object) -> tuple[str, str]:
    if type(doc) is not dict:
        raise SchemaError("<root>", "Input should be an object")
    state = doc.get("state")
    if state == "online":
        raw = check_object(doc, "", _ONLINE_FIELDS, _ONLINE_REQUIRED)
        check_int(raw["heartbeat_s"], "heartbeat_s", 1, 86400)
        check_str(raw["agent"], "agent", None, 0, MAX_TOKEN)
        for field, longest in FACT_STRINGS:
            if raw.get(field) is not None:
                check_str(raw[field], field, None, 0, longest)
        for field, lo, hi in FACT_INTS:
            if raw.get(field) is not None:
                check_int(raw[field], field, lo, hi)
    elif state == "offline":
        raw = check_object(
            doc, "", {k: k for k in ("state", "session", "reason")}, ("session", "reason")
        )
        if type(raw["reason"]) is not str or raw["reason"] not in ("lost", "shutdown"):
            raise SchemaError("reason", "Input should be 'lost' or 'shutdown'")
    else:
        raise SchemaError("state", "Input tag does not match 'online' or 'offline'")
    return state, check_str(raw["session"], "session", _SESSION_RE, 1, MAX_TOKEN)


def decode_status(payload: bytes) -> tuple[str, str] | PayloadError:
    """`(state, session)` of a status document (online or offline, as `wire.DeviceStatus`
    checks them), or the `PayloadError` saying why it is not one (returned, not raised)."""
    try:
        return decode_with("status", payload, len(payload), _status)
    except PayloadError as exc:
        return exc
