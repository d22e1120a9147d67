"""Tier 1: desired documents per device, published only when the retained revision differs."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.mirroring import (
    EMPTY_REVISION,
    Mirror,
    ResourceIndex,
    build_desired,
    check_spec,
    fit_desired,
)
from devicefabric.config.resource import (
    MAX_ARG_LENGTH,
    MAX_COMMAND_ITEMS,
    MAX_ENV_ITEMS,
    MAX_ENV_NAME,
    MAX_ENV_VALUE,
    MAX_WORKING_DIR,
)
from devicefabric.config.wire import MAX_PAYLOAD_BYTES, MAX_PROCESSES, encode
from tests.bridge.memory_cp import resource


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
    doc = mirror.plan("tor9-99", [web])
    assert doc is not None
    mirror.published("tor9-99", doc.revision)
    assert mirror.plan("tor9-99", [web]) is None  # in flight
    mirror.observe("tor9-99", doc.revision)  # our echo
    assert mirror.sent == {}
    assert mirror.plan("tor9-99", [web]) is None


def test_restart_republishes_nothing_unchanged() -> None:
    web = resource("web", "tor9-99")
    retained = build_desired("tor9-99", [web]).revision
    mirror = Mirror()  # a fresh bridge reads the retained documents back first
    mirror.observe("tor9-99", retained)
    assert mirror.plan("tor9-99", [web]) is None


def test_spec_change_republishes() -> None:
    mirror = Mirror()
    web = resource("web", "tor9-99")
    mirror.observe("tor9-99", build_desired("tor9-99", [web]).revision)
    changed = replace(web, generation=2, spec={"deviceName": "tor9-99", "command": ["false"]})
    doc = mirror.plan("tor9-99", [changed])
    assert doc is not None
    assert doc.processes[0].generation == 2


def test_last_resource_gone_gets_an_empty_document_once() -> None:
    mirror = Mirror()
    mirror.observe("tor9-99", build_desired("tor9-99", [resource("web", "tor9-99")]).revision)
    doc = mirror.plan("tor9-99", [])
    assert doc is not None
    assert (doc.processes, doc.revision) == ([], EMPTY_REVISION)
    mirror.observe("tor9-99", doc.revision)
    assert mirror.plan("tor9-99", []) is None


def test_device_never_given_anything_gets_no_empty_document() -> None:
    assert Mirror().plan("tor9-99", []) is None


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


# -- limits: the document count and size limits leave resources out, never raise ---------------
def big(name: str, device: str, args: int = 31) -> Resource:
    """A valid spec of about `args` x 253 bytes (31 arguments: ~8 KB; nine of them: > 64 KiB)."""
    return resource(name, device, command=["run", *(["x" * 250] * args)])


def test_a_document_over_the_payload_limit_leaves_the_offender_out() -> None:
    web = resource("web", "tor9-99")
    parts = [big(f"p{i}", "tor9-99") for i in range(9)]
    fitted = fit_desired("tor9-99", [*parts, web])
    assert [p.key for p in fitted.desired.processes] == [
        "default/p0", "default/p1", "default/p2", "default/p3",
        "default/p4", "default/p5", "default/p6", "default/p7", "default/web",
    ]  # fmt: skip
    assert set(fitted.rejected) == {"default/p8"}  # equal sizes: the last key is left out
    message = fitted.rejected["default/p8"]
    assert message.startswith("desired document for device tor9-99 would be ")
    assert message.endswith(f" bytes, limit {MAX_PAYLOAD_BYTES}")
    size = int(message.split(" would be ")[1].split(" ")[0])
    assert size > MAX_PAYLOAD_BYTES >= len(encode(fitted.desired))


def test_one_resource_at_every_bound_fits_in_the_worst_encoding() -> None:
    wide = "\U0001f600"  # 4 bytes in UTF-8: the widest character a spec may hold
    spec = {
        "deviceName": "d" * 63,
        "command": [wide * MAX_ARG_LENGTH] * MAX_COMMAND_ITEMS,
        "env": [{"name": wide * MAX_ENV_NAME, "value": wide * MAX_ENV_VALUE}] * MAX_ENV_ITEMS,
        "workingDir": wide * MAX_WORKING_DIR,
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": 3600,
    }
    worst = replace(
        resource("n" * 253, "d" * 63, namespace="s" * 63, spec=spec),
        uid="u" * 128,
        generation=2**63 - 1,
    )
    fitted = fit_desired("d" * 63, [worst])
    assert fitted.rejected == {}
    assert len(fitted.desired.processes) == 1
    assert len(encode(fitted.desired)) <= MAX_PAYLOAD_BYTES


def test_the_reported_oversized_spec_is_refused_by_the_spec_itself() -> None:
    spec = {"deviceName": "tor9-99", "command": ["run", *(["x" * 4000] * 17)]}
    reason = check_spec(spec)
    assert isinstance(reason, str)
    assert reason.startswith("spec.command.1: String should have at most 256 characters")


def test_the_257th_process_is_left_out_the_rest_go() -> None:
    many = [resource(f"p-{i:03d}", "tor9-99") for i in range(MAX_PROCESSES + 1)]
    fitted = fit_desired("tor9-99", many)
    assert len(fitted.desired.processes) == MAX_PROCESSES
    ((key, message),) = fitted.rejected.items()
    assert key == "default/p-256"  # equal sizes: the last key is the one left out
    assert f"already has {MAX_PROCESSES} processes" in message


def test_metadata_the_wire_refuses_is_left_out_with_a_reason() -> None:
    odd = replace(resource("web", "tor9-99"), uid="u" * 200, generation=-1)
    mirror = Mirror()
    assert mirror.plan("tor9-99", [odd]) is None  # nothing valid, nothing ever retained
    reason = mirror.rejection("tor9-99", odd.key)
    assert reason is not None
    assert reason.startswith("cannot be sent to device tor9-99: ")


def test_plan_records_and_clears_rejections() -> None:
    mirror = Mirror()
    huge = big("huge", "tor9-99")
    mirror.limit = 1000
    mirror.plan("tor9-99", [huge])
    assert mirror.rejection("tor9-99", huge.key) is not None
    assert mirror.rejection("dev-a", huge.key) is None
    mirror.plan("tor9-99", [])
    assert mirror.rejected == {}


# -- property: no resource content makes planning raise ----------------------------------------
_TEXT = st.text(max_size=12)
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_DEVICES = st.sampled_from(["tor9-99", "dev-a", "bridge", "Not_A_Device", ""])
_ARG = st.text(st.characters(blacklist_characters="\x00"), max_size=3000)
_VALID_SPEC = st.fixed_dictionaries(
    {"deviceName": st.sampled_from(["tor9-99", "dev-a"]), "command": st.lists(_ARG, min_size=1)},
    optional={
        "env": st.lists(st.fixed_dictionaries({"name": st.just("A"), "value": _ARG}), max_size=3),
        "suspend": st.booleans(),
    },
)
_ANY_SPEC = st.fixed_dictionaries(
    {"deviceName": _DEVICES | _JSONISH},
    optional={
        "command": st.lists(st.text(max_size=30), max_size=5) | _JSONISH,
        "restartPolicy": st.sampled_from(["Always", "Never", "Sometimes"]),
        "terminationGracePeriodSeconds": _JSONISH,
        "extra": _JSONISH,
    },
)
_SPEC = _VALID_SPEC | _ANY_SPEC
_RESOURCE = st.builds(
    Resource,
    namespace=st.sampled_from(["default", "ns-1", "Bad NS", "x" * 70]),
    name=st.sampled_from(["web", "db", "a.b", "UPPER", "x" * 260, ""]),
    uid=st.text(max_size=140),
    generation=st.integers(min_value=-2, max_value=2**64),
    resource_version=st.just("1"),
    spec=_SPEC,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_RESOURCE, max_size=25), st.integers(min_value=0, max_value=MAX_PAYLOAD_BYTES))
def test_planning_never_raises(resources: list[Resource], limit: int) -> None:
    mirror = Mirror(limit=max(limit, 64))
    for device in ("tor9-99", "dev-a"):
        doc = mirror.plan(device, resources)
        if doc is not None:
            assert len(encode(doc)) <= mirror.limit
            assert len(doc.processes) <= MAX_PROCESSES
        keys = {r.key for r in resources}
        assert set(mirror.rejected.get(device, {})) <= keys


def test_a_newcomer_never_displaces_what_the_device_runs() -> None:
    mirror = Mirror()
    running = [big(f"z{i}", "tor9-99") for i in range(8)]  # keys after the newcomer's
    first = mirror.plan("tor9-99", running)
    assert first is not None
    mirror.published("tor9-99", first.revision)
    newcomer = big("a", "tor9-99")  # smaller than each z: first by size alone
    assert mirror.plan("tor9-99", [*running, newcomer]) is None  # the document is unchanged
    assert set(mirror.rejected["tor9-99"]) == {newcomer.key}


def test_a_grown_resource_that_no_longer_fits_keeps_its_previous_entry() -> None:
    mirror = Mirror()
    parts = [big(f"p{i}", "tor9-99") for i in range(7)]
    small = resource("s", "tor9-99")
    first = mirror.plan("tor9-99", [*parts, small])
    assert first is not None
    mirror.published("tor9-99", first.revision)
    grown = replace(big("s", "tor9-99"), generation=2)
    grown = replace(grown, spec={**grown.spec, "env": [{"name": "A", "value": "v" * 128}] * 32})
    assert mirror.plan("tor9-99", [*parts, grown]) is None  # the device keeps generation 1
    reason = mirror.rejection("tor9-99", grown.key)
    assert reason is not None
    assert "would be" in reason
    assert reason.endswith("; the device keeps generation 1")
