"""The fake API server with its other clients: Leases, Events, log, faults, kubectl, RBAC.

Also pins two measured facts of the official client that the bridge's design answers: a status
patch from the generated API goes out as a merge patch, and its `Watch` retries a 410 once and then
raises (so the bridge runs its own list-then-watch loop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import pytest
import yaml

from devicefabric.config import deploybundle as manifests
from tests.support.fakeapi import BRIDGE_USER, FakeApiServer, Match
from tests.support.fakeapi.client import (
    LEASES,
    Http,
    created,
    device_process,
    dp_path,
    lease,
)
from tests.support.fakeapi.kubeconfig import kubectl as run_kubectl
from tests.support.fakeapi.rbac import Authorizer

MERGE = "application/merge-patch+json"
# The official client's annotations are partial (untyped functions): treat it as Any at this edge.
kube: Any = kubernetes


# -- Leases and Events ---------------------------------------------------------------------------
EVENTS = "/apis/events.k8s.io/v1/namespaces/default/events"


def test_lease_update_with_a_stale_resource_version_is_409(http: Http) -> None:
    made = http.request("POST", LEASES, lease("a"))
    assert made.status == 201
    mine = dict(made.body, spec=dict(made.body["spec"], holderIdentity="b"))
    updated = http.request("PUT", f"{LEASES}/devicefabric-bridge", mine)
    assert (updated.status, updated.body["spec"]["holderIdentity"]) == (200, "b")
    stale = http.request("PUT", f"{LEASES}/devicefabric-bridge", mine)
    assert (stale.status, stale.body["reason"]) == (409, "Conflict")
    seconds_only = lease("c")
    seconds_only["spec"]["renewTime"] = "2025-01-01T00:00:00Z"
    seconds_only["metadata"]["name"] = "other"
    assert http.request("POST", LEASES, seconds_only).status == 422


def test_a_delete_with_a_stale_resource_version_precondition_is_409(http: Http) -> None:
    made = http.request("POST", LEASES, lease("a"))
    path, rv = f"{LEASES}/devicefabric-bridge", made.body["metadata"]["resourceVersion"]
    renewed = http.request("PUT", path, made.body)  # same content: a no-op keeps the version
    assert renewed.body["metadata"]["resourceVersion"] == rv
    changed = dict(made.body, spec=dict(made.body["spec"], holderIdentity="b"))
    assert http.request("PUT", path, changed).status == 200
    stale = http.request("DELETE", path, {"preconditions": {"resourceVersion": rv}})
    assert (stale.status, stale.body["reason"]) == (409, "Conflict")
    assert "does not match the ResourceVersion in record" in stale.body["message"]
    current = http.get(path).body["metadata"]["resourceVersion"]
    gone = http.request("DELETE", path, {"preconditions": {"resourceVersion": current}})
    assert gone.status == 200
    assert http.get(path).status == 404


def test_a_lease_in_a_missing_namespace_is_404_as_from_a_real_api_server(
    api: FakeApiServer, http: Http
) -> None:
    api.namespaces = {"default"}
    made = http.request("POST", LEASES, lease("a"))
    assert made.status == 404
    assert made.body["reason"] == "NotFound"
    assert made.body["message"] == 'namespaces "devicefabric-system" not found'
    assert made.body["details"] == {"name": "devicefabric-system", "kind": "namespaces"}
    read = http.get(f"{LEASES}/devicefabric-bridge")
    assert (read.status, read.body["reason"]) == (404, "NotFound")
    assert read.body["message"] == 'leases.coordination.k8s.io "devicefabric-bridge" not found'
    api.namespaces.add("devicefabric-system")
    assert http.request("POST", LEASES, lease("a")).status == 201


def event(**overrides: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": "p1."},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "devicefabric.io/bridge",
        "reportingInstance": "bridge-0",
        "action": "Transition",
        "reason": "Connected",
        "note": "The device agent is connected.",
        "type": "Normal",
        "regarding": {
            "apiVersion": "devicefabric.io/v1alpha1",
            "kind": "DeviceProcess",
            "namespace": "default",
            "name": "p1",
        },
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"reportingController": ""}, "reportingController"),
        ({"reportingController": "not a name!"}, "reportingController"),
        ({"eventTime": "2025-01-01T00:00:00Z"}, "eventTime"),
        ({"action": ""}, "action"),
        ({"type": "Info"}, "type"),
        ({"note": "x" * 1025}, "note"),
    ],
)
def test_events_v1_validation(http: Http, overrides: dict[str, Any], field: str) -> None:
    resp = http.request("POST", EVENTS, event(**overrides))
    assert resp.status == 422
    assert field in {c["field"] for c in resp.body["details"]["causes"]}


def test_events_are_created_with_generated_names_in_both_apis(http: Http) -> None:
    made = http.request("POST", EVENTS, event())
    assert made.status == 201
    assert made.body["metadata"]["name"].startswith("p1.")
    core = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e1"},
        "reason": "X",
        "message": "m",
    }
    assert http.request("POST", "/api/v1/namespaces/default/events", core).status == 201
    assert len(http.get(EVENTS).body["items"]) == 1


# -- request log and faults ----------------------------------------------------------------------
def test_request_log_records_request_attributes_user_and_status(api: FakeApiServer) -> None:
    bridge = Http(api.url, BRIDGE_USER)
    assert bridge.create(device_process("p1")).status == 201
    bridge.merge(dp_path(name="p1", subresource="status"), {"status": {"phase": "Running"}})
    records = api.log.records(Match(user=BRIDGE_USER))
    assert [(r.info.method, r.info.verb, r.info.resource_path, r.status) for r in records] == [
        ("POST", "create", "deviceprocesses", 201),
        ("PATCH", "patch", "deviceprocesses/status", 200),
    ]
    patch = records[1]
    assert (patch.info.api_group, patch.info.namespace, patch.info.name) == (
        "devicefabric.io",
        "default",
        "p1",
    )
    assert patch.content_type == MERGE
    assert records[0].timestamp <= patch.timestamp
    assert api.log.count(Match(verb="patch", subresource="status")) == 1


def test_faults_answer_exactly_n_matching_requests(http: Http, api: FakeApiServer) -> None:
    created(http)
    api.inject(429, 2, retry_after=3, verb="patch", subresource="status")
    status_path = dp_path(name="p1", subresource="status")
    first = http.merge(status_path, {"status": {"phase": "Running"}})
    assert (first.status, first.headers["retry-after"]) == (429, "3")
    assert http.get(dp_path(name="p1")).status == 200  # not matching: served
    assert http.merge(status_path, {"status": {"phase": "Running"}}).status == 429
    assert http.merge(status_path, {"status": {"phase": "Running"}}).status == 200
    api.inject(500, 1)
    api.inject(409, 1, verb="get")
    assert http.get(dp_path(name="p1")).status == 500
    assert http.get(dp_path(name="p1")).status == 409
    assert http.get(dp_path(name="p1")).status == 200
    assert api.log.count(injected=True) == 4


# -- the official client and kubectl -------------------------------------------------------------
def test_official_client_merge_patches_status_and_watch_raises_410_after_one_retry(
    http: Http, api: FakeApiServer, kubeconfig: Path
) -> None:
    created(http)
    client = kube.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        custom = kube.client.CustomObjectsApi(client)
        listing = custom.list_namespaced_custom_object(
            "devicefabric.io", "v1alpha1", "default", "deviceprocesses"
        )
        old_rv = listing["metadata"]["resourceVersion"]
        custom.patch_namespaced_custom_object_status(
            "devicefabric.io",
            "v1alpha1",
            "default",
            "deviceprocesses",
            "p1",
            {"status": {"phase": "Running"}},
        )
        assert api.log.records(Match(verb="patch"))[-1].content_type == MERGE
        api.compact()
        watcher = kube.watch.Watch()
        with pytest.raises(kube.client.ApiException) as caught:
            for _ in watcher.stream(
                custom.list_namespaced_custom_object,
                "devicefabric.io",
                "v1alpha1",
                "default",
                "deviceprocesses",
                resource_version=old_rv,
            ):
                pass
        assert caught.value.status == 410
        assert api.log.count(Match(verb="watch")) == 2
    finally:
        client.close()


def test_kubectl_applies_samples_and_prints_our_printer_columns(
    http: Http, api: FakeApiServer, kubeconfig: Path, kubectl: str
) -> None:
    applied = run_kubectl(
        kubectl, kubeconfig, "apply", "--validate=false", "-f", "-", stdin=manifests.samples()
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("created") == 5  # 3 DeviceProcesses, a Device, a set
    http.merge(
        dp_path(name="tor9-99-clock", subresource="status"),
        {
            "status": {
                "phase": "Running",
                "restarts": 2,
                "conditions": [
                    {
                        "type": "AgentConnected",
                        "status": "True",
                        "reason": "Connected",
                        "message": "m",
                        "lastTransitionTime": "2025-01-01T00:00:00Z",
                    }
                ],
            }
        },
    )
    table = run_kubectl(kubectl, kubeconfig, "get", "dproc")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "DEVICE", "PHASE", "CONNECTED", "RESTARTS", "AGE"]
    clock = next(r.split() for r in rows if r.startswith("tor9-99-clock"))
    assert clock[1:5] == ["tor9-99", "Running", "True", "2"]
    devices = run_kubectl(kubectl, kubeconfig, "get", "dev").stdout.splitlines()
    assert devices[0].split() == ["NAME", "CONNECTED", "AGENT", "ARCH", "PROCESSES", "AGE"]
    assert devices[1].split()[0] == "tor9-99"
    sets = run_kubectl(kubectl, kubeconfig, "get", "dpset").stdout.splitlines()
    assert sets[0].split() == ["NAME", "DESIRED", "CURRENT", "UPDATED", "AVAILABLE", "AGE"]
    assert sets[1].split()[0] == "collector"
    again = run_kubectl(
        kubectl, kubeconfig, "apply", "--validate=false", "-f", "-", stdin=manifests.samples()
    )
    assert again.stdout.count("unchanged") == 5
    changed = manifests.samples().replace("restartPolicy: Never", "restartPolicy: OnFailure")
    patched = run_kubectl(
        kubectl, kubeconfig, "apply", "--validate=false", "-f", "-", stdin=changed
    )
    assert patched.stdout.count("configured") == 1, patched.stderr
    assert api.log.records(Match(verb="patch", user="admin"))[-1].content_type == MERGE
    backup = http.get(dp_path(name="gw-eu-1-backup")).body
    assert (backup["spec"]["restartPolicy"], backup["metadata"]["generation"]) == ("OnFailure", 2)


# -- RBAC ------------------------------------------------------------------------------------------
def test_rbac_checker_grants_exactly_the_shipped_rules(api: FakeApiServer) -> None:
    docs = list(yaml.safe_load_all(manifests.read(manifests.RBAC)))
    authorizer = Authorizer.from_manifests(docs, "devicefabric-system/devicefabric-bridge")
    bridge = Http(api.url, BRIDGE_USER)
    bridge.get("/apis/devicefabric.io/v1alpha1/deviceprocesses")
    bridge.get("/apis/devicefabric.io/v1alpha1/deviceprocesses", watch="true", timeoutSeconds="0")
    bridge.merge(dp_path(name="p1", subresource="status"), {"status": {}})
    bridge.get(f"{LEASES}/devicefabric-bridge")
    assert authorizer.denied(api.log.records(), BRIDGE_USER) == []
    bridge.request("PUT", dp_path(name="p1"), device_process("p1"))  # updates: not granted
    bridge.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x")  # other namespace
    bridge.request("DELETE", "/apis/coordination.k8s.io/v1/namespaces/default/leases/x")
    denied = authorizer.denied(api.log.records(), BRIDGE_USER)
    assert [(r.info.verb, r.info.resource_path, r.info.namespace) for r in denied] == [
        ("update", "deviceprocesses", "default"),
        ("get", "leases", "default"),
        ("delete", "leases", "default"),
    ]
    assert authorizer.granted() == {
        ("devicefabric.io", "deviceprocesses", "get"),
        ("devicefabric.io", "deviceprocesses", "list"),
        ("devicefabric.io", "deviceprocesses", "watch"),
        ("devicefabric.io", "deviceprocesses", "create"),  # a set's processes
        ("devicefabric.io", "deviceprocesses", "patch"),
        ("devicefabric.io", "deviceprocesses", "delete"),
        ("devicefabric.io", "deviceprocesses/status", "patch"),
        ("devicefabric.io", "devices", "get"),
        ("devicefabric.io", "devices", "list"),
        ("devicefabric.io", "devices", "watch"),
        ("devicefabric.io", "devices", "create"),
        ("devicefabric.io", "devices/status", "patch"),
        ("devicefabric.io", "deviceprocesssets", "get"),
        ("devicefabric.io", "deviceprocesssets", "list"),
        ("devicefabric.io", "deviceprocesssets", "watch"),
        ("devicefabric.io", "deviceprocesssets/status", "patch"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "list"),  # the shard Leases (--shards)
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("coordination.k8s.io", "leases", "delete"),  # left-behind membership Leases
    }
    namespaced = Authorizer.from_manifests(
        yaml.safe_load_all(manifests.read(manifests.RBAC_NAMESPACED)),
        "devicefabric-system/devicefabric-bridge",
    )
    assert namespaced.granted() == authorizer.granted()
    cluster_list = api.log.records(Match(verb="list", user=BRIDGE_USER))[0]
    assert not namespaced.allows(cluster_list.info)
