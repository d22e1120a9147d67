"""The fake API server, fleet kinds: cluster-scoped Devices, DeviceProcessSets, garbage collection.

As in test_fakeapi.py, each test states one behaviour of the real API server and checks the fake
over the wire: a Device lives at a URL without a namespace (and 404s under one), the status
subresource rules hold for both new kinds, the set's CRD validates and defaults `maxUnavailable`
(an int-or-string), deleting an owner deletes its dependents as background cascading deletion does
(one DELETED event each) unless the delete asks to orphan them, and the bridge's ServiceAccount is
granted exactly the fleet requests it makes.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from devicefabric.config import deploybundle as manifests
from devicefabric.config.fleet import SET_LABEL, TEMPLATE_HASH_LABEL
from tests.support.fakeapi import BRIDGE_USER, FakeApiServer
from tests.support.fakeapi.client import (
    DEVICES,
    Http,
    device,
    device_path,
    device_process,
    dp_path,
    process_set,
    rv,
    set_path,
    take,
)
from tests.support.fakeapi.rbac import Authorizer, used
from tests.support.resources import rolling_update, set_template

SYSTEM = "devicefabric-system"
SERVICE_ACCOUNT = f"{SYSTEM}/devicefabric-bridge"


def made(http: Http, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    resp = http.request("POST", path, obj)
    assert resp.status == 201, resp.body
    body: dict[str, Any] = resp.body
    return body


def owner_ref(owner: dict[str, Any], controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
    }


def owned_process(name: str, owner: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    """A DeviceProcess that `owner` controls (and `more` also own)."""
    obj = device_process(name)
    refs = [owner_ref(owner), *(owner_ref(o, controller=False) for o in more)]
    obj["metadata"]["ownerReferences"] = refs
    return obj


# -- Device: cluster-scoped --------------------------------------------------------------------
def test_a_device_lives_outside_namespaces(http: Http) -> None:
    obj = device("tor9-99", site="lab")
    obj["metadata"]["namespace"] = "default"  # dropped, as by the API server
    body = made(http, DEVICES, obj)
    assert "namespace" not in body["metadata"]
    assert body["metadata"]["generation"] == 1
    assert http.get(device_path("tor9-99")).body["metadata"]["labels"] == {"site": "lab"}
    listed = http.get(DEVICES).body
    assert (listed["kind"], [d["metadata"]["name"] for d in listed["items"]]) == (
        "DeviceList",
        ["tor9-99"],
    )
    under_namespace = "/apis/devicefabric.io/v1alpha1/namespaces/default/devices"
    assert http.get(under_namespace).status == 404
    assert http.get(f"{under_namespace}/tor9-99").status == 404
    assert http.request("POST", under_namespace, device("gw-eu-1")).status == 404
    again = http.request("POST", DEVICES, device("tor9-99"))
    assert (again.status, again.body["reason"]) == (409, "AlreadyExists")
    assert http.request("DELETE", device_path("tor9-99")).status == 200
    assert http.get(device_path("tor9-99")).status == 404


def test_devices_are_watched_across_the_cluster(http: Http) -> None:
    made(http, DEVICES, device("tor9-99"))
    since = http.get(DEVICES).body["metadata"]["resourceVersion"]
    made(http, DEVICES, device("gw-eu-1", role="collector"))
    http.merge(device_path("gw-eu-1"), {"metadata": {"labels": {"role": "gateway"}}})
    events = take(http.watch(DEVICES, resourceVersion=since, timeoutSeconds="1"), 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "gw-eu-1"),
        ("MODIFIED", "gw-eu-1"),
    ]
    assert events[1]["object"]["metadata"]["labels"] == {"role": "gateway"}
    current = take(http.watch(DEVICES, labelSelector="role=gateway", timeoutSeconds="1"), 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in current] == [("ADDED", "gw-eu-1")]


def test_discovery_serves_the_fleet_kinds_with_their_scopes(http: Http) -> None:
    resources = http.get("/apis/devicefabric.io/v1alpha1").body["resources"]
    by_name = {r["name"]: r for r in resources}
    assert (by_name["devices"]["namespaced"], by_name["devices"]["shortNames"]) == (False, ["dev"])
    assert by_name["devices/status"]["namespaced"] is False
    assert (by_name["deviceprocesssets"]["namespaced"], by_name["deviceprocesssets"]["kind"]) == (
        True,
        "DeviceProcessSet",
    )
    assert by_name["deviceprocesssets"]["shortNames"] == ["dpset"]
    assert {"deviceprocesses", "deviceprocesssets/status"} <= set(by_name)


# -- status subresource ---------------------------------------------------------------------------
CONNECTED = {
    "type": "Connected",
    "status": "True",
    "reason": "Connected",
    "message": "The device agent is connected.",
    "lastTransitionTime": "2025-01-01T00:00:00Z",
}


def test_device_status_is_written_only_through_its_subresource(http: Http) -> None:
    obj = device("tor9-99") | {"spec": {"bogus": 1}, "status": {"arch": "arm64"}}
    body = made(http, DEVICES, obj)
    assert (body.get("spec"), "status" in body) == ({}, False)  # spec pruned to nothing
    ignored = http.merge(device_path("tor9-99"), {"status": {"arch": "x86_64"}})
    assert ignored.status == 200
    assert "status" not in ignored.body
    status = {"arch": "arm64", "cpus": 4, "memoryBytes": 8 << 30, "conditions": [CONNECTED]}
    written = http.merge(
        device_path("tor9-99", "status"),
        {"metadata": {"labels": {"site": "lab"}}, "status": status | {"bogus": 1}},
    ).body
    assert written["status"] == status
    assert "labels" not in written["metadata"]  # /status ignores everything else
    assert written["metadata"]["generation"] == 1
    invalid = http.merge(device_path("tor9-99", "status"), {"status": {"cpus": 0}})
    assert (invalid.status, invalid.body["details"]["causes"][0]["field"]) == (
        422,
        "status.cpus",
    )


def test_set_status_is_written_only_through_its_subresource(http: Http) -> None:
    path = set_path(name="collector")
    body = made(http, set_path(), process_set("collector") | {"status": {"desiredNumber": 9}})
    assert "status" not in body
    http.merge(path, {"status": {"desiredNumber": 9}})
    assert "status" not in http.get(path).body
    counts = {"desiredNumber": 2, "currentNumber": 2, "updatedNumber": 1, "availableNumber": 1}
    written = http.merge(
        f"{path}/status",
        {"spec": {"paused": True}, "status": counts | {"observedGeneration": 1}},
    ).body
    assert written["spec"]["paused"] is False  # /status ignores the spec
    assert written["status"] == counts | {"observedGeneration": 1}
    assert written["metadata"]["generation"] == 1
    paused = http.merge(path, {"spec": {"paused": True}}).body
    assert (paused["spec"]["paused"], paused["metadata"]["generation"]) == (True, 2)
    assert paused["status"] == written["status"]


# -- DeviceProcessSet schema: int-or-string, defaults --------------------------------------------
@pytest.mark.parametrize("max_unavailable", ["abc", 0, -1, "150%", True, 1.5])
def test_set_refuses_a_bad_max_unavailable(http: Http, max_unavailable: object) -> None:
    obj = process_set("s", updateStrategy={"rollingUpdate": {"maxUnavailable": max_unavailable}})
    resp = http.request("POST", set_path(), obj)
    assert (resp.status, resp.body["reason"]) == (422, "Invalid")
    (cause,) = resp.body["details"]["causes"]
    assert cause["field"] == "spec.updateStrategy.rollingUpdate.maxUnavailable"


@pytest.mark.parametrize("max_unavailable", [2, "25%"])
def test_set_accepts_a_count_or_a_percentage_and_fills_the_defaults(
    http: Http, max_unavailable: int | str
) -> None:
    obj = process_set("s", updateStrategy={"rollingUpdate": {"maxUnavailable": max_unavailable}})
    obj["spec"]["selector"] = {"matchExpressions": [{"key": "role", "operator": "Exists"}]}
    spec = made(http, set_path(), obj)["spec"]
    assert spec == {
        "selector": {
            "matchLabels": {},
            "matchExpressions": [{"key": "role", "operator": "Exists", "values": []}],
        },
        "template": set_template(["sleep", "60"]),
        "updateStrategy": rolling_update(max_unavailable),
        "paused": False,
    }
    merged = http.merge(
        set_path(name="s"), {"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 3}}}}
    ).body
    assert merged["spec"]["updateStrategy"]["rollingUpdate"] == {
        "maxUnavailable": 3,
        "partition": 0,
        "progressDeadlineSeconds": 600,
        "failurePolicy": "Stop",
    }


def test_set_map_values_are_validated_and_unknown_fields_pruned(http: Http) -> None:
    obj = process_set("s", selector={"matchLabels": {"role": "x" * 64}})
    resp = http.request("POST", set_path(), obj)
    assert resp.status == 422
    assert resp.body["details"]["causes"][0]["field"] == "spec.selector.matchLabels.role"
    obj = process_set("s", selector={"matchLabels": {"role": "collector"}, "bogus": 1})
    obj["spec"]["template"]["deviceName"] = "tor9-99"  # not a template field: pruned
    spec = made(http, set_path(), obj)["spec"]
    assert spec["selector"] == {"matchLabels": {"role": "collector"}, "matchExpressions": []}
    assert "deviceName" not in spec["template"]


# -- garbage collection ---------------------------------------------------------------------------
def test_deleting_a_set_deletes_what_it_owns_with_a_deleted_event_each(
    api: FakeApiServer, http: Http
) -> None:
    owner = made(http, set_path(), process_set("collector"))
    bridge = Http(api.url, BRIDGE_USER)
    for name in ("collector-tor9-99", "collector-gw-eu-1"):
        obj = owned_process(name, owner)
        obj["metadata"]["labels"] = {SET_LABEL: "collector", TEMPLATE_HASH_LABEL: "0123456789"}
        body = made(bridge, dp_path(), obj)
        assert body["metadata"]["ownerReferences"] == [owner_ref(owner)]  # stored as given
    made(http, dp_path(), device_process("hand-written"))
    since = http.get(dp_path()).body["metadata"]["resourceVersion"]
    deleted = http.request("DELETE", set_path(name="collector"))
    assert (deleted.status, deleted.body["metadata"]["name"]) == (200, "collector")
    events = take(http.watch(dp_path(), resourceVersion=since, timeoutSeconds="1"), 2)
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in events) == [
        ("DELETED", "collector-gw-eu-1"),
        ("DELETED", "collector-tor9-99"),
    ]
    revisions = [rv(deleted.body), *(rv(e["object"]) for e in events)]
    assert revisions == sorted(set(revisions))  # the owner first, then one revision each
    remaining = [p["metadata"]["name"] for p in http.get(dp_path()).body["items"]]
    assert remaining == ["hand-written"]


def test_orphan_propagation_keeps_dependents_without_the_reference(http: Http) -> None:
    for via_query in (False, True):
        owner = made(http, set_path(), process_set("collector"))
        made(http, dp_path(), owned_process("collector-tor9-99", owner))
        since = http.get(dp_path()).body["metadata"]["resourceVersion"]
        if via_query:
            resp = http.request(
                "DELETE", set_path(name="collector"), None, propagationPolicy="Orphan"
            )
        else:
            orphan = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"}
            resp = http.request("DELETE", set_path(name="collector"), orphan)
        assert resp.status == 200
        kept = http.get(dp_path(name="collector-tor9-99")).body
        assert "ownerReferences" not in kept["metadata"]
        (event,) = take(http.watch(dp_path(), resourceVersion=since, timeoutSeconds="1"), 1)
        assert (event["type"], rv(event["object"])) == ("MODIFIED", rv(kept))
        assert http.request("DELETE", dp_path(name="collector-tor9-99")).status == 200


def test_a_dependent_with_an_owner_left_only_loses_the_gone_reference(http: Http) -> None:
    first = made(http, set_path(), process_set("first"))
    second = made(http, set_path(), process_set("second"))
    made(http, dp_path(), owned_process("shared", first, second))
    http.request("DELETE", set_path(name="first"))
    refs = http.get(dp_path(name="shared")).body["metadata"]["ownerReferences"]
    assert [r["name"] for r in refs] == ["second"]
    http.request("DELETE", set_path(name="second"))
    assert http.get(dp_path(name="shared")).status == 404


def test_collection_is_recursive_and_crosses_scopes(http: Http) -> None:
    owner = made(http, DEVICES, device("tor9-99"))  # cluster-scoped owner
    middle = made(http, set_path(namespace="other"), process_set("s"))
    http.merge(
        set_path(namespace="other", name="s"),
        {"metadata": {"ownerReferences": [owner_ref(owner)]}},
    )
    made(http, dp_path("other"), owned_process("leaf", middle))
    http.request("DELETE", device_path("tor9-99"))
    assert http.get(set_path(namespace="other", name="s")).status == 404
    assert http.get(dp_path("other", "leaf")).status == 404


def test_invalid_owner_references_and_policies_are_refused(http: Http) -> None:
    obj = device_process("p1")
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "X", "name": "x"}]
    resp = http.create(obj)
    assert resp.status == 422
    assert resp.body["details"]["causes"][0]["field"] == "metadata.ownerReferences[0].uid"
    made(http, dp_path(), device_process("p1"))
    bad = http.request("DELETE", dp_path(name="p1"), {"propagationPolicy": "Sometimes"})
    assert bad.status == 422


# -- RBAC: exactly the bridge's fleet requests -----------------------------------------------------
def bridge_fleet_requests(api: FakeApiServer, http: Http, namespace: str) -> None:
    """Every fleet request the bridge makes (issue 12), as the bridge's ServiceAccount."""
    bridge = Http(api.url, BRIDGE_USER)
    owner = made(http, set_path(namespace), process_set("collector"))
    assert bridge.get(DEVICES).status == 200
    assert bridge.get(DEVICES, watch="true", timeoutSeconds="0").status == 200
    assert bridge.request("POST", DEVICES, device("tor9-99")).status == 201
    status = {"status": {"conditions": [CONNECTED], "agentVersion": "0.1.0"}}
    assert bridge.merge(device_path("tor9-99", "status"), status).status == 200
    for scope in (None, namespace) if namespace == "default" else (namespace,):
        assert bridge.get(set_path(scope)).status == 200
        assert bridge.get(set_path(scope), watch="true", timeoutSeconds="0").status == 200
    counts = {"status": {"desiredNumber": 1, "observedGeneration": 1}}
    assert bridge.merge(set_path(namespace, "collector", "status"), counts).status == 200
    obj = owned_process("collector-tor9-99", owner)
    obj["metadata"]["labels"] = {SET_LABEL: "collector", TEMPLATE_HASH_LABEL: "0123456789"}
    assert bridge.request("POST", dp_path(namespace), obj).status == 201
    rollout = {
        "metadata": {"labels": {TEMPLATE_HASH_LABEL: "abcdef0123"}},
        "spec": {"command": ["sleep", "7200"]},
    }
    assert bridge.merge(dp_path(namespace, "collector-tor9-99"), rollout).status == 200
    assert bridge.request("DELETE", dp_path(namespace, "collector-tor9-99")).status == 200


BEFORE_FLEET = {  # what the bridge was granted before the fleet kinds
    ("devicefabric.io", "deviceprocesses", "get"),
    ("devicefabric.io", "deviceprocesses", "list"),
    ("devicefabric.io", "deviceprocesses", "watch"),
    ("devicefabric.io", "deviceprocesses/status", "patch"),
    ("events.k8s.io", "events", "create"),
    *(("coordination.k8s.io", "leases", v) for v in ("get", "list", "create", "update", "delete")),
}
FLEET_GRANTS = {
    ("devicefabric.io", "devices", "list"),
    ("devicefabric.io", "devices", "watch"),
    ("devicefabric.io", "devices", "create"),
    ("devicefabric.io", "devices/status", "patch"),
    ("devicefabric.io", "deviceprocesssets", "list"),
    ("devicefabric.io", "deviceprocesssets", "watch"),
    ("devicefabric.io", "deviceprocesssets/status", "patch"),
    ("devicefabric.io", "deviceprocesses", "create"),
    ("devicefabric.io", "deviceprocesses", "patch"),
    ("devicefabric.io", "deviceprocesses", "delete"),
}


@pytest.mark.parametrize(
    ("rbac", "namespace"),
    [(manifests.RBAC, "default"), (manifests.RBAC_NAMESPACED, SYSTEM)],
)
def test_the_bridge_is_granted_exactly_its_fleet_requests(
    api: FakeApiServer, http: Http, rbac: str, namespace: str
) -> None:
    authorizer = Authorizer.from_manifests(
        yaml.safe_load_all(manifests.read(rbac)), SERVICE_ACCOUNT
    )
    bridge_fleet_requests(api, http, namespace)
    assert authorizer.denied(api.log.records(), BRIDGE_USER) == []
    assert used(api.log.records(), BRIDGE_USER) == FLEET_GRANTS
    assert authorizer.granted() - BEFORE_FLEET == FLEET_GRANTS | {
        ("devicefabric.io", "devices", "get"),  # one object's read, granted with list and watch
        ("devicefabric.io", "deviceprocesssets", "get"),
    }


def test_the_bridge_may_not_edit_devices_or_sets(api: FakeApiServer, http: Http) -> None:
    docs = list(yaml.safe_load_all(manifests.read(manifests.RBAC_NAMESPACED)))
    authorizer = Authorizer.from_manifests(docs, SERVICE_ACCOUNT)
    made(http, DEVICES, device("tor9-99"))
    made(http, set_path(SYSTEM), process_set("collector"))
    bridge = Http(api.url, BRIDGE_USER)
    bridge.merge(device_path("tor9-99"), {"metadata": {"labels": {"role": "x"}}})
    bridge.request("DELETE", device_path("tor9-99"))
    bridge.merge(set_path(SYSTEM, "collector"), {"spec": {"paused": True}})
    bridge.request("POST", set_path(SYSTEM), process_set("other"))
    bridge.get(set_path(None))  # across namespaces: the namespaced variant grants one
    bridge.request("POST", dp_path("default"), device_process("p1"))  # another namespace
    denied = authorizer.denied(api.log.records(), BRIDGE_USER)
    assert [(r.info.verb, r.info.resource_path, r.info.namespace) for r in denied] == [
        ("patch", "devices", None),
        ("delete", "devices", None),
        ("patch", "deviceprocesssets", SYSTEM),
        ("create", "deviceprocesssets", SYSTEM),
        ("list", "deviceprocesssets", None),
        ("create", "deviceprocesses", "default"),
    ]
