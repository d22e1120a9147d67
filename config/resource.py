"""The DeviceProcess resource (`devicefabric.io/v1alpha1`): spec and status models, conditions.

The spec model is the same one the CRD schema describes and the agent receives inside `desired`;
defaults are filled in here so the bridge publishes the spec "as stored, with defaults". Condition
messages are fixed strings per reason (never a clock or an age), and `set_condition` keeps
`lastTransitionTime` unless the condition's `status` changes: a status written twice is a no-op.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final, Literal, Self, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from devicefabric.config.lean import (
    ARG_PATTERN,
    ENV_NAME_PATTERN,
    MAX_ARG_LENGTH,
    MAX_COMMAND_ITEMS,
    MAX_ENV_ITEMS,
    MAX_ENV_NAME,
    MAX_GRACE_S,
    MAX_MESSAGE,
    MAX_SPEC_BYTES,
    PROCESS_FIELDS,
    PhaseName,
    ProcessStatus,
    RestartPolicyName,
    spec_bytes,
)
from devicefabric.config.names import DEVICE_NAME_PATTERN, RESERVED_NAMES

__all__ = [
    "MAX_ARG_LENGTH",
    "MAX_COMMAND_ITEMS",
    "MAX_ENV_ITEMS",
    "MAX_MESSAGE",
    "MAX_SPEC_BYTES",
    "PhaseName",
    "RestartPolicyName",
]

GROUP: Final = "devicefabric.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "DeviceProcess"
PLURAL: Final = "deviceprocesses"
SHORT_NAME: Final = "dproc"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    UNKNOWN = "Unknown"


class RestartPolicy(enum.StrEnum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


# `PhaseName` and `RestartPolicyName` (config.lean) are the Literal twins of the enums for model
# fields: strict validation accepts the JSON strings (and the StrEnum members, equal strings).


class _CamelModel(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


EnvName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ENV_NAME, pattern=ENV_NAME_PATTERN)
]
Arg = Annotated[str, StringConstraints(max_length=MAX_ARG_LENGTH, pattern=ARG_PATTERN)]


class EnvVar(_CamelModel):
    name: EnvName
    value: Arg = ""


class ProcessSpecBase(_CamelModel):
    """What a process runs and how: every field of a DeviceProcess `spec` but `deviceName`, with
    the defaults of DESIGN.md (a DeviceProcessSet's `spec.template` is exactly these)."""

    command: Annotated[list[Arg], Field(min_length=1, max_length=MAX_COMMAND_ITEMS)]
    env: Annotated[list[EnvVar], Field(max_length=MAX_ENV_ITEMS)] = []
    working_dir: Arg | None = None
    restart_policy: RestartPolicyName = "Always"
    suspend: bool = False
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_S)] = 10


class _OnDevice(_CamelModel):
    device_name: Annotated[str, StringConstraints(pattern=DEVICE_NAME_PATTERN, max_length=63)]


# `_OnDevice` last among the bases puts `deviceName` first among the fields (pydantic collects
# them from the last base to the first), so it is validated, reported and dumped first, as the
# agent's decoder (`lean`) checks it.
class DeviceProcessSpec(ProcessSpecBase, _OnDevice):
    """`spec` of a DeviceProcess: the process, the device that runs it, and its size bound."""

    @field_validator("device_name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise PydanticCustomError(
                "reserved_name",
                "'{name}' is reserved for the fabric's own role users",
                {"name": value},
            )
        return value

    @model_validator(mode="after")
    def _bounded(self) -> DeviceProcessSpec:
        size = spec_bytes(self.command, [(v.name, v.value) for v in self.env], self.working_dir)
        if size > MAX_SPEC_BYTES:
            raise PydanticCustomError(
                "spec_too_large",
                "command, env and workingDir take {size} bytes together; at most {limit}",
                {"size": size, "limit": MAX_SPEC_BYTES},
            )
        return self

    def to_wire(self) -> dict[str, object]:
        """The spec as published in `desired`: camelCase, defaults filled in, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- conditions --------------------------------------------------------------------------------
AGENT_CONNECTED: Final = "AgentConnected"
SYNCED: Final = "Synced"


class ConditionReason(enum.StrEnum):
    """A condition's reason: its word (the value), the condition `status` it sets and its fixed
    `message` (never a clock or an age, so a condition computed twice is equal). One table per
    kind of condition: each member is `WORD = "Word", "True" | "False", "Message."`."""

    _value_: str
    status: Literal["True", "False"]
    message: str

    def __new__(cls, word: str, status: Literal["True", "False"], message: str) -> Self:
        member = str.__new__(cls, word)
        member._value_ = word
        member.status = status
        member.message = message
        return member


class Reason(ConditionReason):
    CONNECTED = "Connected", "True", "The device agent is connected."
    CONNECTION_LOST = (
        "ConnectionLost",
        "False",
        "The device agent's connection was lost (the broker fired its will).",
    )
    SHUTDOWN = "Shutdown", "False", "The device agent shut down cleanly."
    HEARTBEAT_TIMEOUT = (
        "HeartbeatTimeout",
        "False",
        "No heartbeat from the device agent within the stale window.",
    )
    APPLIED = "Applied", "True", "The device runs the current generation of this resource."
    PENDING = (
        "Pending",
        "False",
        "The device has not reported the current generation of this resource yet.",
    )
    INVALID_SPEC = "InvalidSpec", "False", "The spec is invalid; it is not sent to the device."


class Condition(_CamelModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: str


class _StatusModel(_CamelModel):
    def to_wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_HINTS: Final = get_type_hints(ProcessStatus)
_STATUS_FIELDS: Final[dict[str, Any]] = {
    **{f.status_name: (_HINTS[f.name] | None, None) for f in PROCESS_FIELDS},
    "conditions": (list[Condition], []),
}
DeviceProcessStatus: Final = create_model(
    "DeviceProcessStatus",
    __base__=_StatusModel,
    __module__=__name__,
    __doc__="`status` of a DeviceProcess; every field optional, as the API server stores it. "
    "Generated from `lean.ProcessStatus` (`lean.PROCESS_FIELDS` spells its fields), plus "
    "`conditions`.",
    **_STATUS_FIELDS,
)


def make_condition(
    ctype: str, reason: ConditionReason, now: str, detail: str | None = None
) -> Condition:
    """A condition with the fixed status and message of `reason` (detail appended if given)."""
    message = reason.message if detail is None else f"{reason.message} {detail}"
    return Condition(
        type=ctype,
        status=reason.status,
        reason=reason.value,
        message=message[:MAX_MESSAGE],
        last_transition_time=now,
    )


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """Replace the condition of `new.type`, keeping its `lastTransitionTime` if status is equal.

    Returns a new list in a stable order (existing order, new types appended).
    """
    out: list[Condition] = []
    replaced = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        replaced = True
        if cond.status == new.status:
            out.append(new.model_copy(update={"last_transition_time": cond.last_transition_time}))
        else:
            out.append(new)
    if not replaced:
        out.append(new)
    return out


def find_condition(conditions: list[Condition], ctype: str) -> Condition | None:
    return next((c for c in conditions if c.type == ctype), None)
