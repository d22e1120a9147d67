"""The agent's wire codec without pydantic: strict `desired` decoding and canonical encoding.

The device agent must stay small (pydantic alone costs more memory than the rest of the agent),
so it decodes and encodes its own documents here with plain Python. Invariant: `decode_desired`
accepts and refuses exactly what `wire.decode_desired` (the pydantic `Desired` model, strict,
`extra="forbid"`) accepts and refuses, fills in the same defaults, and encodes to the same
canonical bytes; a property test holds the two to that. Limits and patterns come from
`config.names` and the constants below, which the pydantic models use too. Errors are
`PayloadError` (`oversized`, `invalid_json`, `schema`) and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypedDict

from devicefabric.config.errors import PayloadError
from devicefabric.config.names import (
    DEVICE_NAME_PATTERN,
    MAX_OBJECT_NAME,
    OBJECT_NAME_PATTERN,
    RESERVED_NAMES,
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


# -- encoding ----------------------------------------------------------------------------------
def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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


def process_report(
    *,
    generation: int,
    phase: PhaseName,
    pid: int | None,
    restarts: int,
    exit_code: int | None,
    started_at: str | None,
    message: str | None,
) -> dict[str, object]:
    """One `processes` entry of a report: camelCase, no nulls."""
    out: dict[str, object] = {"generation": generation, "phase": phase, "restarts": restarts}
    optional = {"pid": pid, "exitCode": exit_code, "startedAt": started_at, "message": message}
    out.update((k, v) for k, v in optional.items() if v is not None)
    return out


def encode_report(
    session: str, seq: int, revision: str, processes: dict[str, dict[str, object]]
) -> bytes:
    return canonical_json(
        {"session": session, "seq": seq, "revision": revision, "processes": processes}
    )


# -- decoding ----------------------------------------------------------------------------------
class _SchemaError(Exception):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")


def _obj(
    value: object, loc: str, fields: dict[str, str], required: tuple[str, ...]
) -> dict[str, object]:
    """Map a JSON object's keys (alias or field name) to field names; refuse unknown/missing."""
    if type(value) is not dict:
        raise _SchemaError(loc, "Input should be an object")
    out: dict[str, object] = {}
    for key, item in value.items():
        field = fields.get(key)
        if field is None or field in out:  # an alias and its field name: one is extra
            raise _SchemaError(f"{loc}.{key}".lstrip("."), "Extra inputs are not permitted")
        out[field] = item
    for field in required:
        if field not in out:
            raise _SchemaError(f"{loc}.{field}".lstrip("."), "Field required")
    return out


def _str(value: object, loc: str, pattern: re.Pattern[str] | None, lo: int, hi: int) -> str:
    if type(value) is not str:
        raise _SchemaError(loc, "Input should be a valid string")
    if len(value) < lo:
        raise _SchemaError(loc, f"String should have at least {lo} character")
    if len(value) > hi:
        raise _SchemaError(loc, f"String should have at most {hi} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _SchemaError(loc, f"String should match pattern '{pattern.pattern}'")
    return value


def _int(value: object, loc: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise _SchemaError(loc, "Input should be a valid integer")
    if not lo <= value <= hi:
        raise _SchemaError(loc, f"Input should be between {lo} and {hi}")
    return value


def _list(value: object, loc: str, lo: int, hi: int) -> list[object]:
    if type(value) is not list:
        raise _SchemaError(loc, "Input should be a valid list")
    if not lo <= len(value) <= hi:
        raise _SchemaError(loc, f"List should have {lo} to {hi} items")
    return value


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
    raw = _obj(value, loc, {"name": "name", "value": "value"}, ("name",))
    name = _str(raw["name"], f"{loc}.name", _ENV_NAME_RE, 1, MAX_ENV_NAME)
    val = _str(raw.get("value", ""), f"{loc}.value", _ARG_RE, 0, MAX_ARG_LENGTH)
    return EnvVar(name, val)


def _spec(value: object, loc: str) -> ProcessSpec:
    raw = _obj(value, loc, _SPEC_FIELDS, ("device_name", "command"))
    device = _str(raw["device_name"], f"{loc}.deviceName", _DEVICE_RE, 0, 63)
    if device in RESERVED_NAMES:
        raise _SchemaError(
            f"{loc}.deviceName", f"'{device}' is reserved for the fabric's own role users"
        )
    command = _list(raw["command"], f"{loc}.command", 1, MAX_COMMAND_ITEMS)
    args = tuple(
        _str(a, f"{loc}.command.{i}", _ARG_RE, 0, MAX_ARG_LENGTH) for i, a in enumerate(command)
    )
    env_raw = _list(raw.get("env", []), f"{loc}.env", 0, MAX_ENV_ITEMS)
    env = tuple(_env(e, f"{loc}.env.{i}") for i, e in enumerate(env_raw))
    wd = raw.get("working_dir")
    working_dir = None if wd is None else _str(wd, f"{loc}.workingDir", _ARG_RE, 0, MAX_ARG_LENGTH)
    policy = raw.get("restart_policy", "Always")
    if type(policy) is not str or policy not in RESTART_POLICIES:
        raise _SchemaError(
            f"{loc}.restartPolicy", "Input should be 'Always', 'OnFailure' or 'Never'"
        )
    suspend = raw.get("suspend", False)
    if type(suspend) is not bool:
        raise _SchemaError(f"{loc}.suspend", "Input should be a valid boolean")
    grace = _int(
        raw.get("termination_grace_period_seconds", 10),
        f"{loc}.terminationGracePeriodSeconds",
        0,
        MAX_GRACE_S,
    )
    size = spec_bytes(args, [(e.name, e.value) for e in env], working_dir)
    if size > MAX_SPEC_BYTES:
        raise _SchemaError(
            loc, f"command, env and workingDir take {size} bytes together; at most {MAX_SPEC_BYTES}"
        )
    return ProcessSpec(device, args, env, working_dir, policy, suspend, grace)  # type: ignore[arg-type]


_PROCESS_FIELDS: Final = {k: k for k in ("namespace", "name", "uid", "generation", "spec")}


def _process(value: object, loc: str) -> DesiredProcess:
    raw = _obj(value, loc, _PROCESS_FIELDS, tuple(_PROCESS_FIELDS))
    return DesiredProcess(
        namespace=_str(raw["namespace"], f"{loc}.namespace", _DEVICE_RE, 0, 63),
        name=_str(raw["name"], f"{loc}.name", _OBJECT_RE, 0, MAX_OBJECT_NAME),
        uid=_str(raw["uid"], f"{loc}.uid", None, 1, MAX_UID),
        generation=_int(raw["generation"], f"{loc}.generation", 0, INT63 - 1),
        spec=_spec(raw["spec"], f"{loc}.spec"),
    )


def _desired(value: object) -> Desired:
    raw = _obj(
        value, "", {"revision": "revision", "processes": "processes"}, ("revision", "processes")
    )
    revision = _str(raw["revision"], "revision", _REVISION_RE, 1, MAX_TOKEN)
    items = _list(raw["processes"], "processes", 0, MAX_PROCESSES)
    processes = tuple(_process(p, f"processes.{i}") for i, p in enumerate(items))
    seen: set[str] = set()
    for proc in processes:
        if proc.key in seen:
            raise _SchemaError(
                "<root>", f"Value error, processes: {proc.key} appears more than once"
            )
        seen.add(proc.key)
    return Desired(revision, processes)


MAX_JSON_DEPTH: Final = 200  # pydantic-core's JSON parser: a value inside 201 containers fails


def _too_deep(doc: object) -> bool:
    """True when some value sits inside more than `MAX_JSON_DEPTH` containers."""
    stack: list[tuple[object, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if type(value) is dict else value if type(value) is list else ()
        for child in children:
            if depth + 1 > MAX_JSON_DEPTH:
                return True
            stack.append((child, depth + 1))
    return False


_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse(payload: bytes) -> object:
    """JSON as pydantic-core reads it: UTF-8 only, NaN and Infinity allowed, no lone surrogate
    escapes (a pair is one character). Raises ValueError (UnicodeError, JSONDecodeError)."""
    doc = json.loads(payload.decode())
    if payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH and _too_deep(doc):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH}")
    if _SURROGATE_ESCAPE.search(payload):
        canonical_json(doc)  # UnicodeEncodeError for a lone surrogate
    return doc


def decode_desired(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Desired:
    """Decode a `desired` document; `PayloadError` (and nothing else) when it is not one."""
    if len(payload) > limit:
        raise PayloadError("desired", "oversized", f"{len(payload)} bytes > limit {limit}")
    try:
        doc = _parse(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise PayloadError(
            "desired", "invalid_json", f"<root>: Invalid JSON: {exc}"[:300]
        ) from None
    try:
        return _desired(doc)
    except _SchemaError as exc:
        raise PayloadError("desired", "schema", str(exc)[:300]) from None


_SESSION_RE: Final = re.compile(SESSION_PATTERN)
_ONLINE_REQUIRED: Final = ("state", "session", "heartbeat_s", "agent")
_ONLINE_FIELDS: Final = {
    k: k for k in (*_ONLINE_REQUIRED, *(f for f, _ in FACT_STRINGS), *(f for f, _, _ in FACT_INTS))
}


def _status(doc: object) -> tuple[str, str]:
    if type(doc) is not dict:
        raise _SchemaError("<root>", "Input should be an object")
    state = doc.get("state")
    if state == "online":
        raw = _obj(doc, "", _ONLINE_FIELDS, _ONLINE_REQUIRED)
        _int(raw["heartbeat_s"], "heartbeat_s", 1, 86400)
        _str(raw["agent"], "agent", None, 0, MAX_TOKEN)
        for field, longest in FACT_STRINGS:
            if raw.get(field) is not None:
                _str(raw[field], field, None, 0, longest)
        for field, lo, hi in FACT_INTS:
            if raw.get(field) is not None:
                _int(raw[field], field, lo, hi)
    elif state == "offline":
        raw = _obj(doc, "", {k: k for k in ("state", "session", "reason")}, ("session", "reason"))
        if type(raw["reason"]) is not str or raw["reason"] not in ("lost", "shutdown"):
            raise _SchemaError("reason", "Input should be 'lost' or 'shutdown'")
    else:
        raise _SchemaError("state", "Input tag does not match 'online' or 'offline'")
    return state, _str(raw["session"], "session", _SESSION_RE, 1, MAX_TOKEN)


def decode_status(payload: bytes) -> tuple[str, str] | PayloadError:
    """`(state, session)` of a status document (online or offline, as `wire.DeviceStatus`
    checks them), or the `PayloadError` saying why it is not one (returned, not raised)."""
    try:
        doc = _parse(payload)
    except (ValueError, RecursionError) as exc:
        return PayloadError("status", "invalid_json", f"<root>: Invalid JSON: {exc}"[:300])
    try:
        return _status(doc)
    except _SchemaError as exc:
        return PayloadError("status", "schema", str(exc)[:300])
