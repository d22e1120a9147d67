"""Structural OpenAPI v3 schemas as the API server applies them to custom resources.

A `StructuralSchema` wraps a CRD version's `openAPIV3Schema` and does, in the API server's order:
prune (drop fields the schema does not declare, and nulls where no null is allowed), default
(fill `default` values of absent fields, recursively, including inside defaults), and validate
(collect every violation as a `FieldError` with the API server's field path, reason and wording).

Invariants: only the keywords in `SUPPORTED` are understood; a schema using any other keyword is
refused when it is loaded (`UnsupportedSchemaError`), so the fake can never silently skip a rule
our CRD relies on. `x-kubernetes-validations` (CEL) is understood only in the one form our CRD uses,
`!(self in ['a', 'b'])`; any other rule is refused the same way. Patterns are Go RE2 searches
(unanchored unless the pattern anchors itself), which Python's `re.search` matches for the subset
used here. The root keeps `apiVersion`, `kind` and `metadata`; metadata is the store's business.

Maps are `type: object` with `additionalProperties` (a schema for every value; the keys are free).
`x-kubernetes-int-or-string: true` marks a field that holds an integer or a string; its only
`anyOf` allowed is the one the API server allows, `[{type: integer}, {type: string}]`, and its value
validations apply by the value's type, as in OpenAPI (`minimum` to an integer, `pattern` to a
string). Pruning and defaulting keep such a value as it is.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

SUPPORTED: Final = frozenset(
    {
        "type",
        "description",
        "properties",
        "required",
        "items",
        "pattern",
        "enum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "default",
        "format",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-validations",
        "x-kubernetes-int-or-string",
        "additionalProperties",
        "anyOf",
    }
)
_INT_OR_STRING_ANY_OF: Final = [{"type": "integer"}, {"type": "string"}]
_JSON_TYPES: Final = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}
_DATE_TIME: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_NOT_IN_RULE: Final = re.compile(r"^!\(self in \[((?:'[^']*'(?:,\s*)?)+)\]\)$")
_ROOT_KEEP: Final = ("apiVersion", "kind", "metadata")


class UnsupportedSchemaError(ValueError):
    """The schema uses something this fake does not implement."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One violation, as the API server reports it in `Status.details.causes`."""

    field: str
    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueNotSupported, ...
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _shown(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "<object>" if isinstance(value, dict) else f"<array of {len(value)}>"
    return str(value)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _has_type(value: object, expected: str) -> bool:
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[expected])


class StructuralSchema:
    """Prune, default and validate objects against one `openAPIV3Schema`."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._schema = copy.deepcopy(dict(schema))
        self._check(self._schema, "")

    @property
    def raw(self) -> dict[str, Any]:
        return copy.deepcopy(self._schema)

    def _check(self, node: Mapping[str, Any], path: str) -> None:
        unknown = set(node) - SUPPORTED
        if unknown:
            raise UnsupportedSchemaError(f"{path or '<root>'}: unsupported {sorted(unknown)}")
        if node.get("type") not in (None, *_JSON_TYPES, "integer", "number"):
            raise UnsupportedSchemaError(f"{path}: unsupported type {node.get('type')!r}")
        for rule in node.get("x-kubernetes-validations", ()):
            if not _NOT_IN_RULE.match(rule.get("rule", "")):
                raise UnsupportedSchemaError(f"{path}: unsupported CEL rule {rule!r}")
        self._check_shape(node, path)
        for name, child in node.get("properties", {}).items():
            self._check(child, f"{path}.{name}")
        if "items" in node:
            self._check(node["items"], f"{path}[]")

    def _check_shape(self, node: Mapping[str, Any], path: str) -> None:
        """int-or-string and maps: only in the forms the API server accepts as structural."""
        if node.get("x-kubernetes-int-or-string"):
            if "type" in node or node.get("anyOf", _INT_OR_STRING_ANY_OF) != _INT_OR_STRING_ANY_OF:
                raise UnsupportedSchemaError(
                    f"{path}: x-kubernetes-int-or-string takes no type and only the anyOf "
                    f"{_INT_OR_STRING_ANY_OF}"
                )
        elif "anyOf" in node:
            raise UnsupportedSchemaError(f"{path}: anyOf only in the int-or-string form")
        additional = node.get("additionalProperties")
        if additional is not None:
            if not isinstance(additional, Mapping) or "properties" in node:
                raise UnsupportedSchemaError(
                    f"{path}: additionalProperties must be a schema, without properties"
                )
            self._check(additional, f"{path}[*]")

    # -- prune ---------------------------------------------------------------------------------
    def prune(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of `obj` without undeclared fields (root keeps apiVersion/kind/metadata)."""
        out = self._prune(obj, self._schema)
        assert isinstance(out, dict)  # the root schema is an object
        for key in _ROOT_KEEP:
            if key in obj:
                out[key] = copy.deepcopy(obj[key])
        return out

    def _prune(self, value: Any, node: Mapping[str, Any]) -> Any:
        if isinstance(value, dict):
            props = node.get("properties")
            keep_all = node.get("x-kubernetes-preserve-unknown-fields", False)
            additional = node.get("additionalProperties")
            out: dict[str, Any] = {}
            for key, item in value.items():
                if additional is not None:
                    if item is not None:
                        out[key] = self._prune(item, additional)
                elif props is not None and key in props:
                    if item is not None:
                        out[key] = self._prune(item, props[key])
                elif keep_all or (props is None and node.get("type") != "object"):
                    out[key] = copy.deepcopy(item)
            return out
        if isinstance(value, list) and "items" in node:
            return [self._prune(item, node["items"]) for item in value]
        return copy.deepcopy(value)

    # -- default -------------------------------------------------------------------------------
    def default(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of `obj` with every absent field that has a `default` filled in."""
        out = copy.deepcopy(obj)
        self._default(out, self._schema)
        return out

    def _default(self, value: Any, node: Mapping[str, Any]) -> None:
        if isinstance(value, dict):
            for key, child in node.get("properties", {}).items():
                if key not in value and "default" in child:
                    value[key] = copy.deepcopy(child["default"])
                if key in value:
                    self._default(value[key], child)
            if "additionalProperties" in node:
                for item in value.values():
                    self._default(item, node["additionalProperties"])
        elif isinstance(value, list) and "items" in node:
            for item in value:
                self._default(item, node["items"])

    # -- validate ------------------------------------------------------------------------------
    def validate(self, obj: Mapping[str, Any]) -> list[FieldError]:
        """Every violation in `obj` (empty when valid); the root's metadata is not checked."""
        body = {k: v for k, v in obj.items() if k not in _ROOT_KEEP}
        return list(self._validate(body, self._schema, ""))

    def _validate(self, value: Any, node: Mapping[str, Any], path: str) -> Iterator[FieldError]:
        shown_path = path or "<root>"
        expected = node.get("type")
        if node.get("x-kubernetes-int-or-string") and not (
            _has_type(value, "integer") or isinstance(value, str)
        ):
            yield FieldError(
                shown_path,
                "FieldValueTypeInvalid",
                f"Invalid value: {_shown(value)}: {shown_path} in body must be of type "
                f"integer or string: {_shown(_type_name(value))}",
            )
            return
        if expected is not None and not _has_type(value, expected):
            yield FieldError(
                shown_path,
                "FieldValueTypeInvalid",
                f"Invalid value: {_shown(value)}: {shown_path} in body must be of type "
                f"{expected}: {_shown(_type_name(value))}",
            )
            return
        if "enum" in node and value not in node["enum"]:
            allowed = ", ".join(_shown(v) for v in node["enum"])
            yield FieldError(
                shown_path,
                "FieldValueNotSupported",
                f"Unsupported value: {_shown(value)}: supported values: {allowed}",
            )
        if isinstance(value, str):
            yield from self._validate_string(value, node, shown_path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield from self._validate_number(value, node, shown_path)
        elif isinstance(value, list):
            yield from self._validate_array(value, node, path)
        elif isinstance(value, dict):
            yield from self._validate_object(value, node, path)

    def _validate_object(
        self, value: dict[str, Any], node: Mapping[str, Any], path: str
    ) -> Iterator[FieldError]:
        for key in node.get("required", ()):
            if key not in value:
                yield FieldError(_join(path, key), "FieldValueRequired", "Required value")
        for key, child in node.get("properties", {}).items():
            if key in value:
                yield from self._validate(value[key], child, _join(path, key))
        if "additionalProperties" in node:
            for key, item in value.items():
                yield from self._validate(item, node["additionalProperties"], _join(path, key))

    def _validate_string(
        self, value: str, node: Mapping[str, Any], path: str
    ) -> Iterator[FieldError]:
        if "maxLength" in node and len(value) > node["maxLength"]:
            yield FieldError(
                path,
                "FieldValueTooLong",
                f"Too long: may not be more than {node['maxLength']} bytes",
            )
        if "minLength" in node and len(value) < node["minLength"]:
            yield FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_shown(value)}: {path} in body should be at least "
                f"{node['minLength']} chars long",
            )
        if "pattern" in node and not re.search(node["pattern"], value):
            yield FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_shown(value)}: {path} in body should match '{node['pattern']}'",
            )
        if node.get("format") == "date-time" and not _DATE_TIME.match(value):
            yield FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_shown(value)}: {path} in body must be of type date-time",
            )
        for rule in node.get("x-kubernetes-validations", ()):
            match = _NOT_IN_RULE.match(rule["rule"])
            assert match is not None  # refused at load time otherwise
            banned = re.findall(r"'([^']*)'", match.group(1))
            if value in banned:
                message = rule.get("message", f"failed rule: {rule['rule']}")
                yield FieldError(
                    path, "FieldValueInvalid", f"Invalid value: {_shown(value)}: {message}"
                )

    def _validate_number(
        self, value: float, node: Mapping[str, Any], path: str
    ) -> Iterator[FieldError]:
        if "minimum" in node and value < node["minimum"]:
            yield FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {value}: {path} in body should be greater than or equal to "
                f"{node['minimum']}",
            )
        if "maximum" in node and value > node["maximum"]:
            yield FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {value}: {path} in body should be less than or equal to "
                f"{node['maximum']}",
            )

    def _validate_array(
        self, value: list[Any], node: Mapping[str, Any], path: str
    ) -> Iterator[FieldError]:
        count = len(value)
        if "maxItems" in node and count > node["maxItems"]:
            most = node["maxItems"]
            yield FieldError(
                path, "FieldValueTooMany", f"Too many: {count}: must have at most {most} items"
            )
        if "minItems" in node and count < node["minItems"]:
            least = node["minItems"]
            why = f"Invalid value: {count}: {path} in body should have at least {least} items"
            yield FieldError(path, "FieldValueInvalid", why)
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys", ())
            seen: set[tuple[object, ...]] = set()
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    continue
                key = tuple(str(item.get(k)) for k in keys)
                if key in seen:
                    shown = ", ".join(f'"{k}":{_shown(item.get(k))}' for k in keys)
                    yield FieldError(
                        f"{path}[{index}]", "FieldValueDuplicate", f"Duplicate value: map[{shown}]"
                    )
                seen.add(key)
        if "items" in node:
            for index, item in enumerate(value):
                yield from self._validate(item, node["items"], f"{path}[{index}]")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
