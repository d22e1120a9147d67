"""The fleet kinds beside DeviceProcess: `Device` (cluster-scoped) and `DeviceProcessSet`.

Pure contract, shared by the bridge, the CLI and the CRD tests: the spec models, label-selector
matching (Kubernetes' `matchLabels`/`matchExpressions` semantics: every term must hold, an empty
selector matches every device), the name of the DeviceProcess a set owns on a device, the digest
that says which template an owned process runs, the `maxUnavailable` arithmetic, and the
condition reasons with their fixed messages.

Invariants: `owned_name` is a valid object name of at most `MAX_OWNED_NAME` characters for every
valid set and device name, and distinct devices of one set never get the same name;
`template_hash` depends only on the template as stored (defaults filled in), so spelling a
default out changes nothing; `budget` is at least 1 whenever there is a device, so a rollout can
always move.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from devicefabric.config.resource import ConditionReason, DeviceProcessSpec, ProcessSpecBase

DEVICE_KIND: Final = "Device"
DEVICE_PLURAL: Final = "devices"
DEVICE_SHORT_NAME: Final = "dev"
SET_KIND: Final = "DeviceProcessSet"
SET_PLURAL: Final = "deviceprocesssets"
SET_SHORT_NAME: Final = "dpset"

SET_LABEL: Final = "devicefabric.io/set"
"""Label on every DeviceProcess a set owns: the set's name (select them with `-l`)."""
TEMPLATE_HASH_LABEL: Final = "devicefabric.io/template-hash"
"""Label on every owned DeviceProcess: `template_hash` of the template it was written from."""

MAX_OWNED_NAME: Final = 250  # fits a Kubernetes name (253) and a local file name (`<name>.yaml`)
_HASH_CHARS: Final = 10
_PERCENT: Final = re.compile(r"^(0|[1-9][0-9]?|100)%$")

CONNECTED: Final = "Connected"  # the Device condition (reasons as DeviceProcess AgentConnected)
PROGRESSING: Final = "Progressing"
AVAILABLE: Final = "Available"


class _CamelModel(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True
    )


LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317)]
LabelValue = Annotated[str, StringConstraints(max_length=63)]


class SelectorRequirement(_CamelModel):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = []

    @model_validator(mode="after")
    def _values_fit_operator(self) -> SelectorRequirement:
        needs = self.operator in ("In", "NotIn")
        if needs and not self.values:
            raise PydanticCustomError(
                "selector_values", "operator {op} needs at least one value", {"op": self.operator}
            )
        if not needs and self.values:
            raise PydanticCustomError(
                "selector_values", "operator {op} takes no values", {"op": self.operator}
            )
        return self


class LabelSelector(_CamelModel):
    match_labels: dict[LabelKey, LabelValue] = {}
    match_expressions: list[SelectorRequirement] = []


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes semantics: every `matchLabels` pair and every expression must hold."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


class ProcessTemplate(ProcessSpecBase):
    """`spec.template`: a DeviceProcess spec without `deviceName` (same defaults and bounds)."""

    def for_device(self, device: str) -> dict[str, object]:
        """The DeviceProcess spec this template gives `device`, as stored (defaults filled in);
        validated by `DeviceProcessSpec`, so every bound of a hand-written one holds."""
        wire = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return DeviceProcessSpec.model_validate({"deviceName": device, **wire}).to_wire()


IntOrPercent = (
    Annotated[int, Field(ge=1)] | Annotated[str, StringConstraints(pattern=_PERCENT.pattern)]
)


FailureCount = (
    Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=_PERCENT.pattern)]
)
MAX_DEADLINE_S: Final = 7 * 86400


class RollingUpdate(_CamelModel):
    max_unavailable: IntOrPercent = 1
    partition: Annotated[int, Field(ge=0)] = 0
    # s a switched device has to become available before it counts as failed
    progress_deadline_seconds: Annotated[int, Field(ge=1, le=MAX_DEADLINE_S)] = 600
    # failed devices a rollout survives (an int, or a percentage of the selected devices rounded
    # down); None: failures never stop it
    max_failures: FailureCount | None = None
    failure_policy: Literal["Stop", "Rollback"] = "Stop"

    @field_validator("max_unavailable", mode="before")
    @classmethod
    def _int_or_percent(cls, value: object) -> object:
        return _int_or_percent(value, 1, "25%")

    @field_validator("max_failures", mode="before")
    @classmethod
    def _count_or_percent(cls, value: object) -> object:
        return value if value is None else _int_or_percent(value, 0, "10%")


def _int_or_percent(value: object, minimum: int, example: str) -> object:
    """One clear message instead of one per branch of the int | str union."""
    whole = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not (whole or (isinstance(value, str) and _PERCENT.fullmatch(value))):
        raise PydanticCustomError(
            "int_or_percent",
            "must be an integer >= {minimum} or a percentage such as '{example}'",
            {"minimum": minimum, "example": example},
        )
    return value


class UpdateStrategy(_CamelModel):
    type: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"
    rolling_update: RollingUpdate = RollingUpdate()


class DeviceProcessSetSpec(_CamelModel):
    """`spec` of a DeviceProcessSet."""

    selector: LabelSelector = LabelSelector()
    template: ProcessTemplate
    update_strategy: UpdateStrategy = UpdateStrategy()
    paused: bool = False

    def to_wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def budget(max_unavailable: int | str, total: int) -> int:
    """How many devices may be unavailable at once: an int as is, a percentage of `total` rounded
    up (as a DaemonSet does), and never below 1 while there is a device."""
    if isinstance(max_unavailable, str):
        count = math.ceil(total * int(max_unavailable.removesuffix("%")) / 100)
    else:
        count = max_unavailable
    return max(count, 1 if total else 0)


def failures_allowed(max_failures: int | str | None, total: int) -> int | None:
    """How many failed devices a rollout survives: an int as is, a percentage of `total`
    rounded down (a budget for bad news is not rounded in its favour); None: no limit."""
    if max_failures is None:
        return None
    if isinstance(max_failures, str):
        return math.floor(total * int(max_failures.removesuffix("%")) / 100)
    return max_failures


def owned_name(set_name: str, device: str) -> str:
    """`<set>-<device>`; a set name too long for that is cut and followed by a digest of itself,
    so the name stays valid, bounded, and distinct per (set, device)."""
    name = f"{set_name}-{device}"
    if len(name) <= MAX_OWNED_NAME:
        return name
    digest = hashlib.sha256(set_name.encode()).hexdigest()[:_HASH_CHARS]
    room = MAX_OWNED_NAME - len(device) - len(digest) - 2
    head = set_name[:room].rstrip("-.")
    return f"{head}-{digest}-{device}"


def template_hash(template: ProcessTemplate) -> str:
    """A short digest of the template as stored (a label value: 10 hex characters)."""
    wire = template.model_dump(mode="json", by_alias=True, exclude_none=True)
    canonical = json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:_HASH_CHARS]


class SetReason(ConditionReason):
    ROLLOUT_FAILED = (
        "RolloutFailed",
        "False",
        (
            "More devices failed on the current template than maxFailures allows: the rollout "
            "stopped (with failurePolicy Rollback, devices return to the stable template)."
        ),
    )
    ROLLING_OUT = (
        "RollingOut",
        "True",
        "Devices are being updated to the current template within maxUnavailable.",
    )
    COMPLETE = "RolloutComplete", "True", "Every selected device runs the current template."
    PAUSED = "Paused", "False", "The rollout is paused (spec.paused)."
    NAME_CONFLICT = (
        "NameConflict",
        "False",
        "A DeviceProcess this set would own exists and is not owned by it.",
    )
    MINIMUM_AVAILABLE = (
        "MinimumAvailable",
        "True",
        "At least the selected devices minus maxUnavailable are available.",
    )
    TOO_FEW_AVAILABLE = (
        "TooFewAvailable",
        "False",
        "Fewer devices are available than maxUnavailable allows.",
    )


# -- the Device's birth facts ---------------------------------------------------------------------
FACT_FIELDS: Final = (
    ("os", "os"),
    ("arch", "arch"),
    ("kernel", "kernel"),
    ("hostname", "hostname"),
    ("cpus", "cpus"),
    ("memory_bytes", "memoryBytes"),
)
"""(birth payload field, Device status field) of each device fact; every one optional."""
