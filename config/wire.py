"""Pydantic wire models for every fabric payload, and strict decoding with precise errors.

All models are frozen, `extra="forbid"` and strict (no type coercion): unknown fields, wrong types
and oversized payloads are refused with a `PayloadError` that names the reason and the field.
`decode_*` never raise anything else, so an ingest loop can drop and count with one `except`.
Encoding is canonical (sorted keys, compact) so that equal documents are equal bytes and the
desired `revision` is a stable digest of the process list.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from devicefabric.config.errors import PayloadError
from devicefabric.config.lean import (
    MAX_FACT_CPUS,
    MAX_FACT_HOSTNAME,
    MAX_FACT_KERNEL,
    MAX_FACT_OS,
    MAX_PAYLOAD_BYTES,
    MAX_PROCESSES,
    MAX_TOKEN,
    MAX_UID,
    PROCESS_FIELDS,
    REVISION_PATTERN,
    SESSION_PATTERN,
)
from devicefabric.config.logcodec import (
    DEFAULT_LOG_TAIL,
    LOG_ID_PATTERN,
    MAX_LOG_ERROR,
    MAX_LOG_LINE,
    MAX_LOG_TAIL,
    LineStream,
    LogStream,
)
from devicefabric.config.names import DEVICE_NAME_PATTERN, OBJECT_NAME_PATTERN, is_object_key
from devicefabric.config.resource import MAX_MESSAGE, DeviceProcessSpec, PhaseName
from devicefabric.config.strictjson import canonical_json
from devicefabric.config.validation import describe

Session = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TOKEN, pattern=SESSION_PATTERN)
]
Revision = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TOKEN, pattern=REVISION_PATTERN)
]
Seq = Annotated[int, Field(ge=0, lt=2**63)]
# Integers the bridge copies into a resource's status: Kubernetes stores int64, so a larger value
# (from a hostile or broken agent) would make every status write for the resource fail.
Count = Annotated[int, Field(ge=0, lt=2**63)]
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
# `startedAt` is `format: date-time` in the CRD: RFC 3339 with a zone, e.g. 2024-05-01T12:00:00Z.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _date_time(value: str) -> str:
    if not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
    datetime.fromisoformat(value)  # a ValueError for a day or hour out of range
    return value


DateTime = Annotated[str, StringConstraints(max_length=64), AfterValidator(_date_time)]
Namespace = Annotated[str, StringConstraints(pattern=DEVICE_NAME_PATTERN, max_length=63)]
ObjectName = Annotated[str, StringConstraints(pattern=OBJECT_NAME_PATTERN, max_length=253)]


def _object_key(value: str) -> str:
    if not is_object_key(value):
        raise ValueError("must be <namespace>/<name> of a Kubernetes object")
    return value


# One definition of a `<namespace>/<name>` key: `names.is_object_key` (length-capped first).
ObjectKey = Annotated[str, StringConstraints(max_length=317), AfterValidator(_object_key)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _CamelWire(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True
    )


# -- status ------------------------------------------------------------------------------------
class StatusOnline(_Wire):
    state: Literal["online"]
    session: Session
    heartbeat_s: Annotated[int, Field(ge=1, le=86400)]
    agent: Annotated[str, StringConstraints(max_length=64)]
    # Device facts (each optional: older agents send none; `config.fleet.FACT_FIELDS`).
    os: Annotated[str, StringConstraints(max_length=MAX_FACT_OS)] | None = None
    arch: Annotated[str, StringConstraints(max_length=MAX_FACT_OS)] | None = None
    kernel: Annotated[str, StringConstraints(max_length=MAX_FACT_KERNEL)] | None = None
    hostname: Annotated[str, StringConstraints(max_length=MAX_FACT_HOSTNAME)] | None = None
    cpus: Annotated[int, Field(ge=1, le=MAX_FACT_CPUS)] | None = None
    memory_bytes: Count | None = None


class StatusOffline(_Wire):
    state: Literal["offline"]
    session: Session
    reason: Literal["lost", "shutdown"]


DeviceStatus = StatusOnline | StatusOffline


class Heartbeat(_Wire):
    session: Session
    seq: Seq


# -- report ------------------------------------------------------------------------------------
class ProcessReport(_CamelWire):
    """A report's `processes` entry: `lean.ProcessStatus` with the wire's bounds on each field."""

    generation: Count
    phase: PhaseName
    pid: Annotated[int, Field(ge=1, lt=2**63)] | None = None
    restarts: Count = 0
    exit_code: Int64 | None = None
    started_at: DateTime | None = None
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE)] | None = None


def _same_fields(model: type[BaseModel]) -> None:
    """Refuse (at import) a report entry model whose fields are not `lean.PROCESS_FIELDS`."""
    ours = [(f.name, f.wire, f.required, f.default) for f in PROCESS_FIELDS]
    theirs = [
        (name, info.alias, info.is_required(), None if info.is_required() else info.default)
        for name, info in model.model_fields.items()
    ]
    if ours != theirs:
        raise TypeError(f"{model.__name__} differs from lean.ProcessStatus: {theirs} != {ours}")


_same_fields(ProcessReport)


class Report(_Wire):
    session: Session
    seq: Seq
    revision: Revision
    processes: Annotated[dict[ObjectKey, ProcessReport], Field(max_length=MAX_PROCESSES)]


# -- desired -----------------------------------------------------------------------------------
class DesiredProcess(_Wire):
    namespace: Namespace
    name: ObjectName
    uid: Annotated[str, StringConstraints(min_length=1, max_length=MAX_UID)]
    generation: Count
    spec: DeviceProcessSpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Desired(_Wire):
    revision: Revision
    processes: Annotated[list[DesiredProcess], Field(max_length=MAX_PROCESSES)]

    @model_validator(mode="after")
    def _unique_keys(self) -> Desired:
        keys = [p.key for p in self.processes]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"processes: {dup} appears more than once")
        return self


class BridgeStatus(_Wire):
    state: Literal["online", "offline"]
    session: Session


# -- logs (request/reply; the agent's side is `config.logcodec`) ---------------------------------
LogId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TOKEN, pattern=LOG_ID_PATTERN)
]


class LogRequest(_Wire):
    """Bridge -> device: the last `tail` lines (of the last `sinceSeconds`) of one process."""

    id: LogId
    namespace: Namespace
    name: ObjectName
    tail: Annotated[int, Field(ge=1, le=MAX_LOG_TAIL)] = DEFAULT_LOG_TAIL
    since_seconds: Annotated[int, Field(ge=0, lt=2**63)] | None = Field(
        default=None, alias="sinceSeconds"
    )
    stream: LogStream = "both"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class LogLine(_Wire):
    t: DateTime
    s: LineStream
    l: Annotated[str, StringConstraints(max_length=MAX_LOG_LINE)]  # noqa: E741 - the wire name


class LogReply(_Wire):
    """Device -> bridge: chunk `seq` of the answer to request `id`; the last has `end: true`."""

    id: LogId
    seq: Seq
    lines: list[LogLine]
    end: bool
    error: Annotated[str, StringConstraints(max_length=MAX_LOG_ERROR)] | None = None


# -- encoding ----------------------------------------------------------------------------------
__all__ = ["MAX_PAYLOAD_BYTES", "MAX_PROCESSES", "canonical_json"]


def encode(model: BaseModel) -> bytes:
    """Canonical JSON bytes of a wire model (aliases, no nulls)."""
    return canonical_json(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def revision_of(processes: list[DesiredProcess]) -> str:
    """Digest of the canonical desired process list (order-independent: sorted by key, then by
    content, so that even a list naming one key twice has one digest)."""
    items = sorted(
        (p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in processes),
        key=lambda d: (str(d["namespace"]), str(d["name"]), canonical_json(d)),
    )
    return hashlib.sha256(canonical_json(items)).hexdigest()[:16]


def make_desired(processes: list[DesiredProcess]) -> Desired:
    ordered = sorted(processes, key=lambda p: (p.namespace, p.name, encode(p)))
    return Desired(revision=revision_of(ordered), processes=ordered)


# -- decoding ----------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)
_STATUS: Final = TypeAdapter(
    Annotated[StatusOnline | StatusOffline, Field(discriminator="state")],
    config=ConfigDict(strict=True),
)


def _reject(kind: str, exc: ValidationError) -> PayloadError:
    if exc.errors(include_url=False)[0]["type"] == "json_invalid":
        return PayloadError(kind, "invalid_json", describe(exc))
    return PayloadError(kind, "schema", describe(exc))


def _check_size(kind: str, payload: bytes, limit: int) -> None:
    if len(payload) > limit:
        raise PayloadError(kind, "oversized", f"{len(payload)} bytes > limit {limit}")


def decode(kind: str, model: type[M], payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> M:
    """Decode `payload` as `model`; raise `PayloadError` (and nothing else) when it is not one.

    Parsing and validation happen in one pass in pydantic-core (`model_validate_json`), which is
    the ingest hot path's main cost.
    """
    _check_size(kind, payload, limit)
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise _reject(kind, exc) from None


def decode_status(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> DeviceStatus:
    _check_size("status", payload, limit)
    try:
        return _STATUS.validate_json(payload)
    except ValidationError as exc:
        raise _reject("status", exc) from None


_HEARTBEAT: Final = Heartbeat.__pydantic_validator__


def decode_heartbeat(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Heartbeat:
    """`decode` of a heartbeat (the bridge decodes thousands a second): the same validation,
    with pydantic-core's validator called directly instead of through two Python frames."""
    if len(payload) > limit:
        raise PayloadError("heartbeat", "oversized", f"{len(payload)} bytes > limit {limit}")
    try:
        doc: Heartbeat = _HEARTBEAT.validate_json(payload)
    except ValidationError as exc:
        raise _reject("heartbeat", exc) from None
    return doc


def decode_report(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Report:
    return decode("report", Report, payload, limit)


def decode_desired(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Desired:
    return decode("desired", Desired, payload, limit)


def decode_bridge_status(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> BridgeStatus:
    return decode("bridge_status", BridgeStatus, payload, limit)


def decode_log_request(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> LogRequest:
    return decode("logs_request", LogRequest, payload, limit)


def decode_log_reply(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> LogReply:
    return decode("logs_reply", LogReply, payload, limit)
