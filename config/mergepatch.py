"""JSON merge patch (RFC 7386): the one implementation every plane applies.

The local control plane merges a status patch into a resource's status and `rollout` merges a
spec patch with it; the tests' fake API server applies `application/merge-patch+json` bodies with
it. So a patch means the same on both planes, as it does to a real API server.

The rules (RFC 7386, section 2):
- a patch that is not an object replaces the target whole (a list, a string, `null`);
- an object patch merges key by key into the target (a target that is not an object counts as
  `{}`): a `null` value deletes the key, any other value is merged into the target's value by
  these same rules, so objects merge recursively and lists and scalars replace.

Invariants: neither argument is mutated; the result is new along the merge path only, and shares
the untouched parts of the target and the patch's values with them (documents are values: a
caller that changes one in place copies it first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload


@overload
def merge_patch(target: object, patch: Mapping[str, object]) -> dict[str, object]: ...


@overload
def merge_patch(target: object, patch: object) -> object: ...


def merge_patch(target: object, patch: object) -> object:
    """`target` with `patch` merged in (see the module doc)."""
    if not isinstance(patch, Mapping):
        return patch
    out: dict[str, object] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
