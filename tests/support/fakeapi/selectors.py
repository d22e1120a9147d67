"""List and watch filters: label selectors, field selectors, and `limit`/`continue` pages.

Label selectors support the equality and existence forms (`a=b`, `a==b`, `a!=b`, `a`, `!a`) and
set forms (`a in (x,y)`, `a notin (x)`); field selectors `metadata.name` and `metadata.namespace`
with `=`, `==` and `!=`, which is what kubectl sends (`get NAME -w` watches with
`fieldSelector=metadata.name=NAME`). Anything else is a 400, as from the API server.

Pages are cut from the list sorted by namespace/name; the `continue` token carries the revision of
the first page and the last key served, so a paged list reports one revision (the fake does not
keep snapshots: later pages show objects as they are now, which the real server would do only
with `resourceVersionMatch=NotOlderThan`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tests.support.fakeapi.store import ApiError

Predicate = Callable[[Mapping[str, Any]], bool]
_SET: Final = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_FIELDS: Final = {"metadata.name": "name", "metadata.namespace": "namespace"}


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _label_term(term: str) -> Predicate:
    labels: Callable[[Mapping[str, Any]], Mapping[str, str]] = lambda o: (  # noqa: E731
        o.get("metadata", {}).get("labels") or {}
    )
    if match := _SET.match(term):
        key, op, values = (
            match.group(1),
            match.group(2),
            {v.strip() for v in match.group(3).split(",")},
        )
        if op == "in":
            return lambda o: labels(o).get(key) in values
        return lambda o: labels(o).get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if op == "!=":
                return lambda o: labels(o).get(key) != value
            return lambda o: labels(o).get(key) == value
    if term.startswith("!"):
        return lambda o: term[1:] not in labels(o)
    return lambda o: term in labels(o)


def _field_term(term: str) -> Predicate:
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if key not in _FIELDS:
                raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
            attr = _FIELDS[key]
            if op == "!=":
                return lambda o: o.get("metadata", {}).get(attr) != value
            return lambda o: o.get("metadata", {}).get(attr) == value
    raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")


def compile_selectors(label_selector: str | None, field_selector: str | None) -> Predicate:
    terms = [_label_term(t) for t in _split(label_selector or "")]
    terms += [_field_term(t) for t in _split(field_selector or "")]
    return lambda obj: all(term(obj) for term in terms)


@dataclass(frozen=True, slots=True)
class Page:
    rv: int
    next: str | None


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def paginate(
    items: list[dict[str, Any]], rv: int, limit: str | None, token: str | None
) -> tuple[list[dict[str, Any]], Page | None]:
    """The page of `items` for `limit`/`continue` (all items and None without a limit)."""
    if token:
        try:
            state = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, after = int(state["rv"]), str(state["after"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, "BadRequest", "invalid continue token") from None
        items = [o for o in items if _key(o) > after]
    if not limit or int(limit) <= 0:
        return items, Page(rv, None) if token else None
    page = items[: int(limit)]
    more = len(items) > len(page)
    nxt = (
        base64.urlsafe_b64encode(json.dumps({"rv": rv, "after": _key(page[-1])}).encode()).decode()
        if more and page
        else None
    )
    return page, Page(rv, nxt)
