"""Server-side printing: `meta.k8s.io/v1` Tables with the CRD's additionalPrinterColumns.

kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` on `get`; answering with a Table
built from the CRD's printer columns is what makes `kubectl get dproc` show Device, Phase,
Connected, Restarts and Age, so the tests can run kubectl against our real CRD and see the columns
a user would. Column JSONPaths support the subset the CRD uses: `.a.b` field access and one
`[?(@.key=="value")]` filter per step. Kinds without printer columns get Name and Age only.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Final

from tests.support.fakeapi.kinds import ResourceType

_STEP: Final = re.compile(r'\.([A-Za-z0-9_]+)(?:\[\?\(@\.([A-Za-z0-9_]+)=="([^"]*)"\)\])?')
_AGE: Final = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def jsonpath(obj: Mapping[str, Any], path: str) -> Any:
    """Evaluate the CRD printer-column subset of JSONPath; None when absent."""
    node: Any = obj
    pos = 0
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r}")
        pos = match.end()
        node = node.get(match.group(1)) if isinstance(node, Mapping) else None
        if match.group(2) is not None:
            found = [
                i
                for i in (node or [])
                if isinstance(i, Mapping) and i.get(match.group(2)) == match.group(3)
            ]
            node = found[0] if found else None
    return node


def _age(value: Any) -> str:
    if not isinstance(value, str):
        return "<unknown>"
    created = dt.datetime.fromisoformat(value)
    seconds = int((dt.datetime.now(dt.UTC) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def maybe_table(
    rtype: ResourceType, objs: list[dict[str, Any]], accept: str
) -> dict[str, Any] | None:
    """A Table of `objs` when kubectl asked for one, else None."""
    if "as=Table" not in accept:
        return None
    columns = [{"name": "Name", "type": "string", "jsonPath": ".metadata.name"}]
    columns += [dict(c) for c in rtype.printer_columns] or [_AGE]
    rows = []
    for obj in objs:
        cells = []
        for column in columns:
            value = jsonpath(obj, column["jsonPath"])
            if column["type"] == "date":
                value = _age(value)
            cells.append(value)
        partial = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }
        rows.append({"cells": cells, "object": partial})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [
            {"name": c["name"], "type": c["type"], "format": "", "description": "", "priority": 0}
            for c in columns
        ],
        "rows": rows,
    }
