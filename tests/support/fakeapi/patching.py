"""PATCH bodies as the API server applies them: JSON merge patch and JSON patch, by content type.

- `application/merge-patch+json` (RFC 7386): objects merge recursively, `null` deletes, anything
  else (lists included) replaces: `devicefabric.config.mergepatch`, the one the local plane uses.
- `application/json-patch+json` (RFC 6902): `add`, `remove`, `replace`, `move`, `copy`, `test` with
  JSON pointers (`~0`/`~1` escapes, `-` appends).
- `application/strategic-merge-patch+json`: the API server refuses it for custom resources with 415
  (there are no patch strategies without Go struct tags); for built-in kinds this fake applies it as
  a merge patch, which is what it means for the fields of Leases and Events.
- `application/apply-patch+yaml` (server-side apply) is not implemented: 415, said plainly.

Invariants: the input object is never mutated; every failure is a `PatchError` carrying the HTTP
status the API server would answer (400 for a malformed patch, 415 for an unsupported type, 422
for a failed `test` or a bad path), so the server maps it without guessing.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from devicefabric.config.mergepatch import merge_patch

MERGE: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC: Final = "application/strategic-merge-patch+json"
APPLY: Final = "application/apply-patch+yaml"
CUSTOM_RESOURCE_TYPES: Final = (JSON_PATCH, MERGE, APPLY)


class PatchError(Exception):
    """A patch that cannot be applied; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def apply_patch(
    obj: dict[str, Any], body: bytes, content_type: str, custom: bool
) -> dict[str, Any]:
    """The patched copy of `obj`; `custom` marks a custom resource (no strategic merge)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if (media == STRATEGIC and custom) or media not in (MERGE, JSON_PATCH, STRATEGIC, APPLY):
        accepted = ", ".join(
            CUSTOM_RESOURCE_TYPES if custom else (*CUSTOM_RESOURCE_TYPES, STRATEGIC)
        )
        raise PatchError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{accepted}",
        )
    if media == APPLY:
        raise PatchError(415, "UnsupportedMediaType", "server-side apply is not implemented")
    try:
        patch = json.loads(body or b"null")
    except ValueError as exc:
        raise PatchError(400, "BadRequest", f"error decoding patch: {exc}") from None
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise PatchError(400, "BadRequest", "json patch must be a list of operations")
        return json_patch(obj, patch)
    if not isinstance(patch, dict):
        raise PatchError(400, "BadRequest", "merge patch must be a JSON object")
    return merge_patch(obj, patch)


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(422, "Invalid", f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _parent(doc: Any, tokens: list[str], pointer: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token, pointer)
    return node, tokens[-1]


def _child(node: Any, token: str, pointer: str) -> Any:
    if isinstance(node, dict) and token in node:
        return node[token]
    if isinstance(node, list) and token.isdigit() and int(token) < len(node):
        return node[int(token)]
    raise PatchError(422, "Invalid", f"path {pointer!r} does not exist")


def _get(doc: Any, pointer: str) -> Any:
    node = doc
    for token in _tokens(pointer):
        node = _child(node, token, pointer)
    return node


def _add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = _tokens(pointer)
    if not tokens:
        return copy.deepcopy(value)
    parent, last = _parent(doc, tokens, pointer)
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise PatchError(422, "Invalid", f"index out of range in {pointer!r}")
        parent.insert(index, copy.deepcopy(value))
    else:
        raise PatchError(422, "Invalid", f"path {pointer!r} does not exist")
    return doc


def _remove(doc: Any, pointer: str) -> Any:
    tokens = _tokens(pointer)
    if not tokens:
        raise PatchError(422, "Invalid", "cannot remove the whole document")
    parent, last = _parent(doc, tokens, pointer)
    _child(parent, last, pointer)  # must exist
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def _operation(doc: Any, op: Any) -> Any:
    if not isinstance(op, dict) or "op" not in op or "path" not in op:
        raise PatchError(400, "BadRequest", f"invalid operation {op!r}")
    kind, path = op["op"], op["path"]
    if kind == "add":
        return _add(doc, path, op.get("value"))
    if kind == "remove":
        return _remove(doc, path)
    if kind == "replace":
        _get(doc, path)
        return _add(_remove(doc, path), path, op.get("value"))
    if kind in ("move", "copy"):
        value = copy.deepcopy(_get(doc, op.get("from", "")))
        if kind == "move":
            doc = _remove(doc, op["from"])
        return _add(doc, path, value)
    if kind == "test":
        if _get(doc, path) != op.get("value"):
            raise PatchError(422, "Invalid", f"test operation failed at {path!r}")
        return doc
    raise PatchError(400, "BadRequest", f"unknown operation {kind!r}")


def json_patch(obj: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """RFC 6902 on a copy of `obj`."""
    doc: Any = copy.deepcopy(obj)
    for op in ops:
        doc = _operation(doc, op)
    if not isinstance(doc, dict):
        raise PatchError(422, "Invalid", "the patched document is not an object")
    return doc
