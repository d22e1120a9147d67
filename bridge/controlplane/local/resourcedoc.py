"""A DeviceProcess resource file as `LocalStore` reads and writes it: pure functions, no IO.

`next_document` is what `apply` does to a stored document (create with a new uid and generation 1,
or update: generation bumps only when the spec changes; labels and annotations replaced);
`resource_bytes`/`json_bytes` are the bytes the store writes (JSON, which is YAML too). A status
patch is merged with `config.mergepatch` (RFC 7386, as the API server does).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Literal

from devicefabric.bridge.controlplane.local.userfiles import Manifest
from devicefabric.config.resource import API_VERSION
from devicefabric.runtime.clock import rfc3339

Outcome = Literal["created", "configured", "unchanged"]


def next_document(
    old: dict[str, object] | None, manifest: Manifest
) -> tuple[dict[str, object], Outcome]:
    """The resource file after applying `manifest` over `old`, and what happened."""
    old_meta = old.get("metadata") if old else None
    if old is None or not isinstance(old_meta, dict):
        meta: dict[str, object] = {
            "name": manifest.name,
            **({"namespace": manifest.namespace} if manifest.namespace else {}),
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": rfc3339(),
        }
        outcome: Outcome = "created"
    else:
        meta = dict(old_meta)
        spec_changed = old.get("spec") != manifest.spec
        if spec_changed:
            meta["generation"] = (to_int(meta.get("generation")) or 1) + 1
        unchanged = (
            not spec_changed
            and meta.get("labels", {}) == manifest.labels
            and meta.get("annotations", {}) == manifest.annotations
        )
        outcome = "unchanged" if unchanged else "configured"
    for field_name, value in (("labels", manifest.labels), ("annotations", manifest.annotations)):
        if value:
            meta[field_name] = dict(value)
        else:
            meta.pop(field_name, None)
    if manifest.owners:  # set by the bridge only (a set's processes); `apply` keeps what is there
        meta["ownerReferences"] = [dict(ref) for ref in manifest.owners]
    doc: dict[str, object] = {
        "apiVersion": API_VERSION,
        "kind": manifest.kind,
        "metadata": meta,
        "spec": manifest.spec,
    }
    return doc, outcome


def to_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def resource_bytes(doc: Mapping[str, object]) -> bytes:
    """A resource file: JSON (which is YAML too) in the document's own key order, UTF-8 as is
    (no `\\u` escapes, which YAML readers take differently for characters outside the BMP)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def json_bytes(doc: Mapping[str, object], indent: int | None = None) -> bytes:
    separators = (",", ": ") if indent else (",", ":")
    return json.dumps(doc, indent=indent, separators=separators, sort_keys=True).encode()
