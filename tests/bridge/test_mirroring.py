"""Tier 1: desired documents per device, published only when the retained revision differs."""

from __future__ import annotations

from dataclasses import replace

from devicefabric.bridge.mirroring import EMPTY_REVISION, Mirror, ResourceIndex, build_desired
from tests.support.memoryplane import resource


def test_build_groups_by_device_fills_defaults_and_skips_invalid_specs() -> None:
    good = resource("web", "tor9-99", command=["sleep", "1"])
    bad = resource("bad", "tor9-99", spec={"deviceName": "tor9-99", "command": []})
    elsewhere = resource("db", "dev-a")
    doc = build_desired("tor9-99", [bad, good, elsewhere])
    assert [p.key for p in doc.processes] == ["default/web"]
    spec = doc.processes[0].spec.to_wire()
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 10
    assert doc.processes[0].uid == good.uid


def test_plan_publishes_once_and_not_what_is_retained() -> None:
    mirror = Mirror()
    web = resource("web", "tor9-99")
    doc = mirror.plan("tor9-99", [web]).doc
    assert doc is not None
    mirror.published("tor9-99", doc)
    assert mirror.plan("tor9-99", [web]).doc is None  # in flight
    mirror.observe("tor9-99", doc.revision)  # our echo
    assert mirror.sent == {}
    assert mirror.plan("tor9-99", [web]).doc is None


def test_restart_republishes_nothing_unchanged() -> None:
    web = resource("web", "tor9-99")
    retained = build_desired("tor9-99", [web]).revision
    mirror = Mirror()  # a fresh bridge reads the retained documents back first
    mirror.observe("tor9-99", retained)
    assert mirror.plan("tor9-99", [web]).doc is None


def test_spec_change_republishes() -> None:
    mirror = Mirror()
    web = resource("web", "tor9-99")
    mirror.observe("tor9-99", build_desired("tor9-99", [web]).revision)
    changed = replace(web, generation=2, spec={"deviceName": "tor9-99", "command": ["false"]})
    doc = mirror.plan("tor9-99", [changed]).doc
    assert doc is not None
    assert doc.processes[0].generation == 2


def test_last_resource_gone_gets_an_empty_document_once() -> None:
    mirror = Mirror()
    mirror.observe("tor9-99", build_desired("tor9-99", [resource("web", "tor9-99")]).revision)
    doc = mirror.plan("tor9-99", []).doc
    assert doc is not None
    assert (doc.processes, doc.revision) == ([], EMPTY_REVISION)
    mirror.observe("tor9-99", doc.revision)
    assert mirror.plan("tor9-99", []).doc is None


def test_device_never_given_anything_gets_no_empty_document() -> None:
    assert Mirror().plan("tor9-99", []).doc is None


def test_index_tracks_devices_and_says_what_to_remirror() -> None:
    index = ResourceIndex()
    web = resource("web", "tor9-99")
    assert index.update(web.key, web) == {"tor9-99"}
    assert index.keys_of("tor9-99") == {"default/web"}
    status_only = replace(web, status={"phase": "Running"}, resource_version="9")
    assert index.update(web.key, status_only) == set()
    moved = replace(web, spec={"deviceName": "dev-a", "command": ["true"]}, generation=2)
    assert index.update(web.key, moved) == {"tor9-99", "dev-a"}
    assert index.keys_of("tor9-99") == frozenset()
    assert list(index.devices()) == ["dev-a"]
    assert index.update(web.key, None) == {"dev-a"}
    assert list(index.devices()) == []


def test_index_ignores_invalid_device_names() -> None:
    index = ResourceIndex()
    bad = resource("web", "Not_A_Device")
    assert index.update(bad.key, bad) == set()
    assert index.device_of_key(bad.key) is None


def test_a_publish_not_echoed_in_time_is_planned_again() -> None:
    mirror = Mirror()
    web, other = resource("web", "tor9-99"), resource("db", "dev-a")
    doc = mirror.plan("tor9-99", [web]).doc
    doc2 = mirror.plan("dev-a", [other]).doc
    assert doc is not None
    assert doc2 is not None
    mirror.published("tor9-99", doc, now=100.0)
    mirror.published("dev-a", doc2, now=105.0)
    mirror.observe("dev-a", doc2.revision)  # echoed: never expires
    assert mirror.expire_sent(now=109.0, older_than=10.0) == []
    assert mirror.plan("tor9-99", [web]).doc is None  # still in flight
    assert mirror.expire_sent(now=111.0, older_than=10.0) == ["tor9-99"]
    again = mirror.plan("tor9-99", [web]).doc
    assert again is not None
    assert again.revision == doc.revision
    assert mirror.expire_sent(now=200.0, older_than=10.0) == []  # forgotten once
    assert mirror.plan("dev-a", [other]).doc is None
