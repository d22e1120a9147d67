"""A Kubernetes API server fake for the tests: real HTTP, our own CRDs, faults on demand.

    with FakeApiServer() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...  # point the real client, kubectl or the bridge at it
        api.log.count(Match(verb="patch", subresource="status"))

Modules: `server` (lifecycle, test controls), `handler` (HTTP, routing, watch streams), `store`
(revisions, history, write rules), `schema` (structural schema: prune, default, validate),
`patching` (merge and JSON patch), `kinds` (served resource types), `faults` (request log, fault
injection), `selectors`, `tables`, `discovery`, `kubeconfig`, `client` (a plain-HTTP client for
tests), and `rbac` (checks the log against our shipped Roles).
"""

from tests.support.fakeapi.faults import Match, RequestLog, RequestRecord
from tests.support.fakeapi.kubeconfig import ADMIN_USER, BRIDGE_USER, bridge_user, write_kubeconfig
from tests.support.fakeapi.server import FakeApiServer

__all__ = [
    "ADMIN_USER",
    "BRIDGE_USER",
    "FakeApiServer",
    "Match",
    "RequestLog",
    "RequestRecord",
    "bridge_user",
    "write_kubeconfig",
]
