"""The fake API server pins the API server behaviours every Kubernetes claim of ours rests on.

Each test states one behaviour of the real API server and checks the fake over real HTTP: with
plain `http.client` (the wire), with the official `kubernetes` client (what the bridge uses), and
with kubectl (what a user types).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import pytest
import yaml

from devicefabric.config import manifests
from tests.kube.fakeapi import BRIDGE_USER, FakeApiServer, Match
from tests.kube.fakeapi.client import Http, Response, WatchEnded, device_process, dp_path
from tests.kube.fakeapi.rbac import Authorizer
from tests.support.waiting import wait_for

MERGE = "application/merge-patch+json"
# The official client's annotations are partial (untyped functions): treat it as Any at this edge.
kube: Any = kubernetes


def created(http: Http, name: str = "p1", **spec: Any) -> dict[str, Any]:
    resp = http.create(device_process(name, **spec))
    assert resp.status == 201, resp.body
    body: dict[str, Any] = resp.body
    return body


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# -- discovery -------------------------------------------------------------------------------
def test_discovery_serves_our_crd_and_the_built_in_kinds(http: Http) -> None:
    assert http.get("/version").body["major"] == "1"
    groups = {g["name"] for g in http.get("/apis").body["groups"]}
    assert groups == {"devicefabric.io", "events.k8s.io", "coordination.k8s.io"}
    resources = http.get("/apis/devicefabric.io/v1alpha1").body["resources"]
    by_name = {r["name"]: r for r in resources}
    assert by_name["deviceprocesses"]["shortNames"] == ["dproc"]
    assert by_name["deviceprocesses"]["kind"] == "DeviceProcess"
    assert "deviceprocesses/status" in by_name
    assert http.get("/openapi/v2").status == 404
    assert http.get("/apis/nothing.example/v1").status == 404


# -- create: server fields, status dropped, pruning, defaulting ------------------------------
def test_create_sets_server_fields_drops_status_prunes_and_defaults(http: Http) -> None:
    obj = device_process("p1")
    obj["status"] = {"phase": "Running"}
    obj["spec"]["bogus"] = 1
    obj["extra"] = {"x": 1}
    obj["metadata"]["uid"] = "mine"
    resp = http.create(obj)
    assert resp.status == 201
    body = resp.body
    assert "status" not in body
    assert "bogus" not in body["spec"]
    assert "extra" not in body
    assert body["metadata"]["generation"] == 1
    assert body["metadata"]["uid"] != "mine"
    assert body["metadata"]["namespace"] == "default"
    assert body["metadata"]["creationTimestamp"].endswith("Z")
    assert body["spec"] == {
        "deviceName": "tor9-99",
        "command": ["sleep", "60"],
        "env": [],
        "restartPolicy": "Always",
        "suspend": False,
        "terminationGracePeriodSeconds": 10,
    }
    again = http.create(device_process("p1"))
    assert (again.status, again.body["reason"]) == (409, "AlreadyExists")


def test_defaults_apply_inside_list_items(http: Http) -> None:
    body = created(http, env=[{"name": "A"}])
    assert body["spec"]["env"] == [{"name": "A", "value": ""}]


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({"deviceName": "Tor9"}, "spec.deviceName", "FieldValueInvalid"),
        ({"deviceName": "bridge"}, "spec.deviceName", "FieldValueInvalid"),
        ({"deviceName": "x" * 64}, "spec.deviceName", "FieldValueTooLong"),
        ({"command": []}, "spec.command", "FieldValueInvalid"),
        ({"restartPolicy": "Sometimes"}, "spec.restartPolicy", "FieldValueNotSupported"),
        (
            {"terminationGracePeriodSeconds": 3601},
            "spec.terminationGracePeriodSeconds",
            "FieldValueInvalid",
        ),
        ({"suspend": "yes"}, "spec.suspend", "FieldValueTypeInvalid"),
        ({"env": [{"value": "v"}]}, "spec.env[0].name", "FieldValueRequired"),
        ({"env": [{"name": "A=B"}]}, "spec.env[0].name", "FieldValueInvalid"),
    ],
)
def test_schema_violations_are_422_with_causes(
    http: Http, spec: dict[str, Any], field: str, reason: str
) -> None:
    obj = device_process("bad")
    obj["spec"].update(spec)
    resp = http.create(obj)
    assert resp.status == 422, resp.body
    assert resp.body["reason"] == "Invalid"
    causes = {(c["field"], c["reason"]) for c in resp.body["details"]["causes"]}
    assert (field, reason) in causes
    assert http.get(dp_path(name="bad")).status == 404


def test_missing_spec_and_command_are_required(http: Http) -> None:
    obj = device_process("bad")
    del obj["spec"]["command"]
    causes = http.create(obj).body["details"]["causes"]
    assert {
        "field": "spec.command",
        "reason": "FieldValueRequired",
        "message": "Required value",
    } in causes
    del obj["spec"]
    assert http.create(obj).body["details"]["causes"][0]["field"] == "spec"


# -- updates: status subresource, generation, no-ops, preconditions -------------------------
def test_main_resource_ignores_status_and_spec_change_bumps_generation(http: Http) -> None:
    first = created(http)
    resp = http.merge(
        dp_path(name="p1"), {"spec": {"suspend": True}, "status": {"phase": "Failed"}}
    )
    assert resp.status == 200
    assert resp.body["spec"]["suspend"] is True
    assert "status" not in resp.body
    assert resp.body["metadata"]["generation"] == 2
    assert rv(resp.body) > rv(first)


def test_status_subresource_ignores_spec_and_keeps_generation(http: Http) -> None:
    created(http)
    resp = http.merge(
        dp_path(name="p1", subresource="status"),
        {"spec": {"suspend": True}, "status": {"phase": "Running", "restarts": 0}},
    )
    assert resp.status == 200
    assert resp.body["status"] == {"phase": "Running", "restarts": 0}
    assert resp.body["spec"]["suspend"] is False
    assert resp.body["metadata"]["generation"] == 1
    removed = http.merge(dp_path(name="p1", subresource="status"), {"status": {"restarts": None}})
    assert removed.body["status"] == {"phase": "Running"}


def test_status_writes_are_validated(http: Http) -> None:
    created(http)
    bad = http.merge(dp_path(name="p1", subresource="status"), {"status": {"phase": "Sleeping"}})
    assert bad.status == 422
    duplicate = {
        "type": "Synced",
        "status": "True",
        "reason": "Applied",
        "message": "m",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    dup = http.merge(
        dp_path(name="p1", subresource="status"), {"status": {"conditions": [duplicate, duplicate]}}
    )
    assert dup.status == 422
    assert dup.body["details"]["causes"][0]["reason"] == "FieldValueDuplicate"
    bad_time = dict(duplicate, lastTransitionTime="yesterday")
    when = http.merge(
        dp_path(name="p1", subresource="status"), {"status": {"conditions": [bad_time]}}
    )
    assert when.status == 422


def test_noop_write_keeps_resource_version_and_emits_no_event(
    http: Http, api: FakeApiServer
) -> None:
    first = created(http)
    status = {"status": {"phase": "Running"}}
    written = http.merge(dp_path(name="p1", subresource="status"), status).body
    same = http.merge(dp_path(name="p1", subresource="status"), status).body
    assert rv(same) == rv(written)
    also_same = http.merge(dp_path(name="p1"), {"spec": {"suspend": False}}).body
    assert rv(also_same) == rv(written)
    http.merge(dp_path(name="p1", subresource="status"), {"status": {"phase": "Failed"}})
    events = http.watch(dp_path(), resourceVersion=str(rv(first)))
    seen = [(e["type"], e["object"]["status"]["phase"]) for e in _take(events, 2)]
    assert seen == [("MODIFIED", "Running"), ("MODIFIED", "Failed")]
    assert api.log.count(Match(verb="patch"), noop=True) == 2  # the log tells no-ops apart
    assert api.log.count(Match(verb="patch"), noop=False) == 2


def test_stale_resource_version_precondition_is_409(http: Http) -> None:
    first = created(http)
    http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})
    stale = {
        "metadata": {"resourceVersion": first["metadata"]["resourceVersion"]},
        "spec": {"suspend": False},
    }
    resp = http.merge(dp_path(name="p1"), stale)
    assert (resp.status, resp.body["reason"]) == (409, "Conflict")


def test_patch_types_json_patch_works_and_strategic_merge_is_415(http: Http) -> None:
    created(http)
    ops = [
        {"op": "replace", "path": "/spec/command/1", "value": "5"},
        {"op": "add", "path": "/spec/command/-", "value": "x"},
    ]
    resp = http.request("PATCH", dp_path(name="p1"), ops, "application/json-patch+json")
    assert resp.status == 200
    assert resp.body["spec"]["command"] == ["sleep", "5", "x"]
    failed = http.request(
        "PATCH",
        dp_path(name="p1"),
        [{"op": "test", "path": "/spec/suspend", "value": True}],
        "application/json-patch+json",
    )
    assert failed.status == 422
    strategic = http.request(
        "PATCH", dp_path(name="p1"), {"spec": {}}, "application/strategic-merge-patch+json"
    )
    assert strategic.status == 415
    assert http.merge(dp_path(name="nope"), {"spec": {}}).status == 404


# -- list and watch ----------------------------------------------------------------------------
def _take(
    events: Iterator[dict[str, Any]], n: int, skip_bookmarks: bool = True
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in events:
        if skip_bookmarks and event["type"] == "BOOKMARK":
            continue
        out.append(event)
        if len(out) == n:
            break
    return out


def test_list_then_watch_from_its_revision_sees_each_change_once_in_order(http: Http) -> None:
    created(http, "p1")
    listing = http.get(dp_path())
    assert listing.body["kind"] == "DeviceProcessList"
    assert [i["metadata"]["name"] for i in listing.body["items"]] == ["p1"]
    list_rv = listing.body["metadata"]["resourceVersion"]
    created(http, "p2")
    http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})
    assert http.request("DELETE", dp_path(name="p2")).status == 200
    events = _take(http.watch(dp_path(), resourceVersion=list_rv), 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "p2"),
        ("MODIFIED", "p1"),
        ("DELETED", "p2"),
    ]
    revisions = [rv(e["object"]) for e in events]
    assert revisions == sorted(revisions)
    assert http.get(dp_path(name="p2")).status == 404


def test_watch_without_revision_starts_with_synthetic_added(http: Http) -> None:
    created(http, "p1")
    events = _take(http.watch(dp_path()), 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "p1")]


def test_bookmarks_only_when_allowed_and_carry_the_current_revision(
    http: Http, api: FakeApiServer
) -> None:
    """A bookmark moves a watcher past changes to other kinds or namespaces it does not see."""
    created(http)
    assert http.request("POST", LEASES, lease("a")).status == 201  # the revision moves on
    ended = WatchEnded()
    events = list(
        http.watch(
            dp_path(), ended, resourceVersion="1", allowWatchBookmarks="true", timeoutSeconds="1"
        )
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[-1]["object"]["metadata"]["resourceVersion"] == str(api.store.resource_version)
    assert ended.clean
    plain = list(http.watch(dp_path(), resourceVersion="1", timeoutSeconds="1"))
    assert [e["type"] for e in plain] == ["ADDED"]


def test_compacted_revision_gets_410_expired_error_event(http: Http, api: FakeApiServer) -> None:
    first = created(http)
    http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})
    api.compact()
    ended = WatchEnded()
    events = list(
        http.watch(dp_path(), ended, resourceVersion=first["metadata"]["resourceVersion"])
    )
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    assert ended.clean
    current = str(api.store.resource_version)
    assert _take(http.watch(dp_path(), resourceVersion=current, timeoutSeconds="1"), 1) == []


def test_drop_watches_cuts_the_connection_mid_stream(http: Http, api: FakeApiServer) -> None:
    ended = WatchEnded()
    received: list[dict[str, Any]] = []

    def reader() -> None:
        received.extend(
            http.watch(dp_path(), ended, resourceVersion="1", allowWatchBookmarks="true")
        )

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for(lambda: api.active_watches("deviceprocesses") == 1, what="the watch to open")
    assert api.drop_watches() == 1
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert not ended.clean
    assert ended.error
    wait_for(lambda: api.active_watches() == 0, what="the server to forget the watch")


def test_label_and_field_selectors_and_pages(http: Http) -> None:
    for name in ("a", "b", "c"):
        obj = device_process(name)
        obj["metadata"]["labels"] = {"tier": "edge" if name != "b" else "core"}
        assert http.create(obj).status == 201

    def names(resp: Response) -> list[str]:
        return [i["metadata"]["name"] for i in resp.body["items"]]

    assert names(http.get(dp_path(), labelSelector="tier=edge")) == ["a", "c"]
    assert names(http.get(dp_path(), labelSelector="tier notin (edge)")) == ["b"]
    assert names(http.get(dp_path(), fieldSelector="metadata.name=b")) == ["b"]
    first = http.get(dp_path(), limit="2")
    assert names(first) == ["a", "b"]
    rest = http.get(dp_path(), limit="2", **{"continue": first.body["metadata"]["continue"]})
    assert names(rest) == ["c"]
    assert "continue" not in rest.body["metadata"]
    assert http.get(dp_path(), fieldSelector="spec.deviceName=x").status == 400


# -- Leases and Events ---------------------------------------------------------------------------
LEASES = "/apis/coordination.k8s.io/v1/namespaces/devicefabric-system/leases"
EVENTS = "/apis/events.k8s.io/v1/namespaces/default/events"


def lease(holder: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "devicefabric-bridge"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": "2025-01-01T00:00:00.000000Z",
        },
    }


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


def _kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        ["kubectl", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_kubectl_applies_samples_and_prints_our_printer_columns(
    http: Http, api: FakeApiServer, kubeconfig: Path
) -> None:
    applied = _kubectl(
        kubeconfig, "apply", "--validate=false", "-f", "-", stdin=manifests.samples()
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("created") == 3
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
    table = _kubectl(kubeconfig, "get", "dproc")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "DEVICE", "PHASE", "CONNECTED", "RESTARTS", "AGE"]
    clock = next(r.split() for r in rows if r.startswith("tor9-99-clock"))
    assert clock[1:5] == ["tor9-99", "Running", "True", "2"]
    again = _kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=manifests.samples())
    assert again.stdout.count("unchanged") == 3
    changed = manifests.samples().replace("restartPolicy: Never", "restartPolicy: OnFailure")
    patched = _kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=changed)
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
    bridge.merge(dp_path(name="p1"), {"spec": {}})  # spec writes: not granted
    bridge.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x")  # other namespace
    bridge.request("DELETE", f"{LEASES}/devicefabric-bridge")
    denied = authorizer.denied(api.log.records(), BRIDGE_USER)
    assert [(r.info.verb, r.info.resource_path, r.info.namespace) for r in denied] == [
        ("patch", "deviceprocesses", "default"),
        ("get", "leases", "default"),
        ("delete", "leases", "devicefabric-system"),
    ]
    assert authorizer.granted() == {
        ("devicefabric.io", "deviceprocesses", "get"),
        ("devicefabric.io", "deviceprocesses", "list"),
        ("devicefabric.io", "deviceprocesses", "watch"),
        ("devicefabric.io", "deviceprocesses/status", "patch"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
    namespaced = Authorizer.from_manifests(
        yaml.safe_load_all(manifests.read(manifests.RBAC_NAMESPACED)),
        "devicefabric-system/devicefabric-bridge",
    )
    assert namespaced.granted() == authorizer.granted()
    cluster_list = api.log.records(Match(verb="list", user=BRIDGE_USER))[0]
    assert not namespaced.allows(cluster_list.info)
