"""The resource types the fake serves: our CRDs' kinds, Events (both APIs) and Leases.

A `ResourceType` describes one served resource: where it lives in the URL space, whether it is a
custom resource (schema-driven: pruning, defaulting, validation, no strategic merge), whether it
has a status subresource, and how a built-in kind is validated. `from_crd` builds a custom type
from a CRD document (each of ours, read from package data), so the fake enforces exactly what we
ship; a cluster-scoped kind (`namespaced=False`) is served at URLs without a namespace.

Built-in validation is the subset of the API server's rules the bridge can trip over, with its
wording: events.k8s.io/v1 Events need `eventTime` (a MicroTime: exactly six fractional digits),
`reportingController` (a qualified name), `reportingInstance`, `action`, `reason` (each at most 128
characters), `note` at most 1 KiB, `type` Normal or Warning, and `regarding.namespace` equal to the
Event's namespace. Leases need a positive `leaseDurationSeconds` and MicroTime `acquireTime` and
`renewTime`. Core v1 Events are served in their own storage (the real server converts between the
two APIs over one storage; nothing here reads across them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from tests.support.fakeapi.schema import FieldError, StructuralSchema

Validator = Callable[[Mapping[str, Any]], list[FieldError]]

MICRO_TIME: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_QUALIFIED_NAME: Final = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One resource the fake serves."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    custom: bool = False
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    schema: StructuralSchema | None = None
    validator: Validator | None = None
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`deviceprocesses.devicefabric.io`, `leases.coordination.k8s.io`, `events`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def validate(self, obj: Mapping[str, Any]) -> list[FieldError]:
        errors = self.schema.validate(obj) if self.schema is not None else []
        if self.validator is not None:
            errors.extend(self.validator(obj))
        return errors


def from_crd(crd: Mapping[str, Any]) -> ResourceType:
    """The served, stored version of `crd` (a CustomResourceDefinition document)."""
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec["versions"] if v.get("served") and v.get("storage")]
    if len(versions) != 1:
        raise ValueError("the fake serves exactly one version: the storage version")
    version = versions[0]
    return ResourceType(
        group=spec["group"],
        version=version["name"],
        plural=names["plural"],
        kind=names["kind"],
        singular=names.get("singular", names["kind"].lower()),
        namespaced=spec["scope"] == "Namespaced",
        custom=True,
        status_subresource="status" in version.get("subresources", {}),
        short_names=tuple(names.get("shortNames", ())),
        categories=tuple(names.get("categories", ())),
        schema=StructuralSchema(version["schema"]["openAPIV3Schema"]),
        printer_columns=tuple(version.get("additionalPrinterColumns", ())),
    )


def _required(obj: Mapping[str, Any], path: str, errors: list[FieldError]) -> Any:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node in (None, ""):
        errors.append(FieldError(path, "FieldValueRequired", "Required value"))
    return node


def _too_long(value: Any, limit: int, path: str, errors: list[FieldError]) -> None:
    if isinstance(value, str) and len(value) > limit:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f'Invalid value: "{value[:20]}...": can have at most {limit} characters',
            )
        )


def _micro_time(value: Any, path: str, errors: list[FieldError]) -> None:
    if value is not None and not (isinstance(value, str) and MICRO_TIME.match(value)):
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {value!r}: not a MicroTime (RFC 3339, 6 fractional digits)",
            )
        )


def validate_event_v1(obj: Mapping[str, Any]) -> list[FieldError]:
    """events.k8s.io/v1 Event create validation (the API server's ValidateEventCreate subset)."""
    errors: list[FieldError] = []
    _micro_time(_required(obj, "eventTime", errors), "eventTime", errors)
    controller = _required(obj, "reportingController", errors)
    if isinstance(controller, str) and controller and not _QUALIFIED_NAME.match(controller):
        errors.append(
            FieldError(
                "reportingController",
                "FieldValueInvalid",
                f'Invalid value: "{controller}": must be a qualified name',
            )
        )
    for path in ("reportingInstance", "action", "reason"):
        _too_long(_required(obj, path, errors), 128, path, errors)
    _too_long(obj.get("note"), 1024, "note", errors)
    if obj.get("type") not in ("Normal", "Warning"):
        errors.append(
            FieldError(
                "type",
                "FieldValueInvalid",
                f"Invalid value: {obj.get('type')!r}: has invalid value",
            )
        )
    regarding = obj.get("regarding") or {}
    namespace = (obj.get("metadata") or {}).get("namespace")
    if regarding.get("namespace", "") not in ("", namespace) or (
        not regarding.get("namespace") and namespace not in ("", "default")
    ):
        errors.append(
            FieldError(
                "regarding.namespace",
                "FieldValueInvalid",
                "Invalid value: does not match event.namespace",
            )
        )
    return errors


def validate_lease(obj: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        errors.append(
            FieldError(
                "spec.leaseDurationSeconds",
                "FieldValueInvalid",
                f"Invalid value: {duration}: must be greater than 0",
            )
        )
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        errors.append(
            FieldError(
                "spec.leaseTransitions",
                "FieldValueInvalid",
                f"Invalid value: {transitions}: must be greater than or equal to 0",
            )
        )
    for name in ("acquireTime", "renewTime"):
        _micro_time(spec.get(name), f"spec.{name}", errors)
    return errors


CORE_EVENTS: Final = ResourceType(
    group="", version="v1", plural="events", kind="Event", singular="event", short_names=("ev",)
)
EVENTS_V1: Final = replace(CORE_EVENTS, group="events.k8s.io", validator=validate_event_v1)
LEASES: Final = ResourceType(
    group="coordination.k8s.io",
    version="v1",
    plural="leases",
    kind="Lease",
    singular="lease",
    validator=validate_lease,
)
BUILT_IN: Final = (CORE_EVENTS, EVENTS_V1, LEASES)
