"""RBAC, checked: does our shipped Role grant every request the bridge made?

`Authorizer.from_manifests(docs, service_account)` collects the rules bound to the ServiceAccount
by the RoleBindings and ClusterRoleBindings among `docs` (our `rbac.yaml`, or the namespaced
variant): a ClusterRole bound by a ClusterRoleBinding grants in every namespace, a Role (or a
ClusterRole bound by a RoleBinding) only in the binding's namespace. `allows(info)` decides one
request the way the API server's RBAC authorizer does: verb, API group and resource (with
`/subresource`) must each match a rule, `*` matching anything, and a cluster-wide request (no
namespace: a list or watch across namespaces, or any request on a cluster-scoped kind such as
Device) needs a cluster-wide grant, i.e. a ClusterRole bound by a ClusterRoleBinding. Discovery URLs are
allowed, as the default `system:discovery` binding does for every authenticated user.

`denied(records, user)` returns the requests of `user` the rules do not grant; `used(...)` the set
of (group, resource, verb) the user exercised, to compare with what the Role grants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tests.support.fakeapi.faults import RequestInfo, RequestRecord

_DISCOVERY: Final = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")


@dataclass(frozen=True, slots=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    namespace: str | None  # None: every namespace (and cluster-wide requests)

    def allows(self, info: RequestInfo) -> bool:
        def has(values: frozenset[str], value: str) -> bool:
            return "*" in values or value in values

        return (
            has(self.verbs, info.verb)
            and has(self.api_groups, info.api_group or "")
            and has(self.resources, info.resource_path)
            and (self.namespace is None or self.namespace == info.namespace)
        )


def _rules(role: Mapping[str, Any], namespace: str | None) -> list[Rule]:
    return [
        Rule(
            frozenset(rule.get("apiGroups", ())),
            frozenset(rule.get("resources", ())),
            frozenset(rule.get("verbs", ())),
            namespace,
        )
        for rule in role.get("rules") or ()
    ]


@dataclass(frozen=True, slots=True)
class Authorizer:
    rules: tuple[Rule, ...]

    @classmethod
    def from_manifests(cls, docs: Iterable[Mapping[str, Any]], service_account: str) -> Authorizer:
        """Rules bound to `service_account` ("namespace/name") by the bindings in `docs`."""
        sa_namespace, _, sa_name = service_account.partition("/")
        docs = list(docs)
        roles = {
            (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
            for d in docs
            if d.get("kind") in ("Role", "ClusterRole")
        }
        rules: list[Rule] = []
        for binding in docs:
            if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            bound = any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == sa_name
                and s.get("namespace") == sa_namespace
                for s in binding.get("subjects") or ()
            )
            if not bound:
                continue
            ref = binding["roleRef"]
            cluster_binding = binding["kind"] == "ClusterRoleBinding"
            namespace = None if cluster_binding else binding["metadata"]["namespace"]
            role_namespace = None if ref["kind"] == "ClusterRole" else namespace
            role = roles.get((ref["kind"], role_namespace, ref["name"]))
            if role is None:
                raise ValueError(f"{binding['metadata']['name']}: no {ref['kind']} {ref['name']}")
            rules.extend(_rules(role, namespace))
        return cls(tuple(rules))

    def allows(self, info: RequestInfo) -> bool:
        if not info.is_resource:
            return info.method == "GET" and info.path.startswith(_DISCOVERY)
        return any(rule.allows(info) for rule in self.rules)

    def denied(self, records: Iterable[RequestRecord], user: str) -> list[RequestRecord]:
        return [r for r in records if r.user == user and not self.allows(r.info)]

    def granted(self) -> set[tuple[str, str, str]]:
        """Every (group, resource, verb) the rules name explicitly."""
        return {
            (group, resource, verb)
            for rule in self.rules
            for group in rule.api_groups
            for resource in rule.resources
            for verb in rule.verbs
        }


def used(records: Iterable[RequestRecord], user: str) -> set[tuple[str, str, str]]:
    """The (group, resource, verb) triples `user` exercised on resources."""
    return {
        (r.info.api_group or "", r.info.resource_path, r.info.verb)
        for r in records
        if r.user == user and r.info.is_resource
    }
