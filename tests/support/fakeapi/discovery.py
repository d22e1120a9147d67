"""Discovery documents: what kubectl and the client read before they touch a resource.

`/version`, `/api` (APIVersions), `/api/v1` and `/apis/{group}/{version}` (APIResourceList),
`/apis` (APIGroupList) and `/apis/{group}` (APIGroup), built from the served `ResourceType`s, so a
resource is discoverable exactly when it is served. Aggregated discovery (apidiscovery.k8s.io/v2)
is not offered: answering plain `application/json` makes kubectl fall back to these documents.
`/openapi/v2` and `/openapi/v3` answer 404 (kubectl then needs `--validate=false`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from tests.support.fakeapi.kinds import ResourceType

if TYPE_CHECKING:
    from tests.support.fakeapi.faults import RequestInfo
    from tests.support.fakeapi.server import FakeApiServer

VERSION: Final = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-devicefabric-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERBS: Final = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _not_found(path: str) -> tuple[int, dict[str, Any]]:
    return 404, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"the server could not find the requested resource ({path})",
        "reason": "NotFound",
        "code": 404,
    }


def resource_list(group_version: str, types: Iterable[ResourceType]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rtype in types:
        resources.append(
            {
                "name": rtype.plural,
                "singularName": rtype.singular,
                "namespaced": rtype.namespaced,
                "kind": rtype.kind,
                "verbs": _VERBS,
                "shortNames": list(rtype.short_names),
                "categories": list(rtype.categories),
            }
        )
        if rtype.status_subresource:
            resources.append(
                {
                    "name": f"{rtype.plural}/status",
                    "singularName": "",
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def _groups(types: Iterable[ResourceType]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rtype in types:
        if rtype.group and rtype.version not in groups.setdefault(rtype.group, []):
            groups[rtype.group].append(rtype.version)
    return groups


def _root(fake: FakeApiServer, path: str) -> dict[str, Any] | None:
    if path == "/version":
        return VERSION
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{fake.port}"}
            ],
        }
    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group(name, versions) for name, versions in _groups(fake.types).items()],
        }
    return None


def document(fake: FakeApiServer, info: RequestInfo) -> tuple[int, dict[str, Any]]:
    """The discovery document at `info.path`, or a 404 Status."""
    path = info.path.rstrip("/")
    types = fake.types
    groups = _groups(types)
    if info.method != "GET":
        return 405, {"kind": "Status", "apiVersion": "v1", "code": 405, "status": "Failure"}
    root = _root(fake, path)
    if root is not None:
        return 200, root
    if info.api_group == "" and info.api_version == "v1":
        return 200, resource_list("v1", [t for t in types if not t.group])
    if info.api_group and info.api_version:
        served = [t for t in types if (t.group, t.version) == (info.api_group, info.api_version)]
        if served:
            return 200, resource_list(f"{info.api_group}/{info.api_version}", served)
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == "apis" and parts[2] in groups:
        return 200, {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[2], groups[parts[2]])}
    return _not_found(path)
