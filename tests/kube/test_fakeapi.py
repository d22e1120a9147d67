"""The fake API server, resources: discovery, create, schema, status subresource, patches.

Each test states one behaviour of the real API server and checks the fake over the wire (plain
`http.client`). Watches are in test_fakeapi_watch.py; Leases, Events, the request log, faults,
the official client, kubectl and RBAC in test_fakeapi_clients.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fakeapi import FakeApiServer, Match
from tests.support.fakeapi.client import (
    Http,
    created,
    device_process,
    dp_path,
    rv,
    take,
)


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
    seen = [(e["type"], e["object"]["status"]["phase"]) for e in take(events, 2)]
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
