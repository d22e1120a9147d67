"""Strict JSON checking without pydantic: the parser and the checks the lean codecs are built of.

`config.lean` (the agent's `desired`, status) and `config.logcodec` (logs requests) decode their
documents with these instead of pydantic, and must accept and refuse exactly what the pydantic
models (strict, `extra="forbid"`) do: so `parse` reads JSON as pydantic-core does, and each check
refuses what pydantic's strict mode refuses, with a message of the same words. `decode_with` is the
one frame around a decoder: a size limit, the parse, the checks, and every failure mapped to a
`PayloadError` (`oversized`, `invalid_json`, `schema`) and nothing else. `canonical_json` is the
fabric's encoding (sorted keys, compact, UTF-8), so equal documents are equal bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Final, TypeVar

from devicefabric.config.errors import PayloadError

T = TypeVar("T")


def canonical_json(obj: object) -> bytes:
    """The canonical bytes of a JSON document: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class SchemaError(Exception):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")


def check_object(
    value: object, loc: str, fields: dict[str, str], required: tuple[str, ...]
) -> dict[str, object]:
    """Map a JSON object's keys (alias or field name) to field names; refuse unknown/missing."""
    if type(value) is not dict:
        raise SchemaError(loc, "Input should be an object")
    out: dict[str, object] = {}
    for key, item in value.items():
        field = fields.get(key)
        if field is None or field in out:  # an alias and its field name: one is extra
            raise SchemaError(f"{loc}.{key}".lstrip("."), "Extra inputs are not permitted")
        out[field] = item
    for field in required:
        if field not in out:
            raise SchemaError(f"{loc}.{field}".lstrip("."), "Field required")
    return out


def check_str(value: object, loc: str, pattern: re.Pattern[str] | None, lo: int, hi: int) -> str:
    if type(value) is not str:
        raise SchemaError(loc, "Input should be a valid string")
    if len(value) < lo:
        raise SchemaError(loc, f"String should have at least {lo} character")
    if len(value) > hi:
        raise SchemaError(loc, f"String should have at most {hi} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise SchemaError(loc, f"String should match pattern '{pattern.pattern}'")
    return value


def check_int(value: object, loc: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise SchemaError(loc, "Input should be a valid integer")
    if not lo <= value <= hi:
        raise SchemaError(loc, f"Input should be between {lo} and {hi}")
    return value


def check_list(value: object, loc: str, lo: int, hi: int) -> list[object]:
    if type(value) is not list:
        raise SchemaError(loc, "Input should be a valid list")
    if not lo <= len(value) <= hi:
        raise SchemaError(loc, f"List should have {lo} to {hi} items")
    return value


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


def parse(payload: bytes) -> object:
    """JSON as pydantic-core reads it: UTF-8 only, NaN and Infinity allowed, no lone surrogate
    escapes (a pair is one character). Raises ValueError (UnicodeError, JSONDecodeError)."""
    doc = json.loads(payload.decode())
    if payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH and _too_deep(doc):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH}")
    if _SURROGATE_ESCAPE.search(payload):
        canonical_json(doc)  # UnicodeEncodeError for a lone surrogate
    return doc


def decode_with(kind: str, payload: bytes, limit: int, build: Callable[[object], T]) -> T:
    """`build` applied to the JSON of `payload`, or a `PayloadError` of `kind` (`oversized`,
    `invalid_json`, `schema`; nothing else) saying why `payload` is not one: the frame of every
    decoder here and in `config.logcodec`."""
    if len(payload) > limit:
        raise PayloadError(kind, "oversized", f"{len(payload)} bytes > limit {limit}")
    try:
        doc = parse(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise PayloadError(kind, "invalid_json", f"<root>: Invalid JSON: {exc}"[:300]) from None
    try:
        return build(doc)
    except SchemaError as exc:
        raise PayloadError(kind, "schema", str(exc)[:300]) from None
