"""No resource content can make a desired document the wire refuses (sans-IO, tables + property).

Past 256 processes on one device the extra resources are refused; a document over the payload
limit is not published at all (the device keeps its last one) and only the resources that would
have changed it are refused. Refusals go away when the cause does.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.mirroring import Mirror, check_spec
from devicefabric.config.wire import MAX_PROCESSES, encode
from tests.support.memoryplane import resource

DEV = "tor9-99"


def many(count: int, device: str = DEV) -> list[Resource]:
    return [resource(f"p-{i:03d}", device) for i in range(count)]


def test_past_256_processes_the_extra_resources_are_refused_and_the_rest_sent() -> None:
    mirror = Mirror()
    plan = mirror.plan(DEV, many(MAX_PROCESSES + 1))
    assert plan.doc is not None
    assert len(plan.doc.processes) == MAX_PROCESSES
    assert plan.refusals_changed == {"default/p-256"}
    assert "at most 256 per device" in mirror.rejected["default/p-256"]
    # one fewer: the refusal goes away, and says so
    mirror.published(DEV, plan.doc)
    plan = mirror.plan(DEV, many(MAX_PROCESSES))
    assert plan.refusals_changed == {"default/p-256"}
    assert mirror.rejected == {}


def big(name: str, generation: int = 1, kib: int = 30) -> Resource:
    """A valid spec of about `kib` KiB (one resource may take at most 32 KiB)."""
    spec = {"deviceName": DEV, "command": ["echo", *["x" * 1000] * kib]}
    return replace(resource(name, DEV, spec=spec), generation=generation)


def test_an_oversized_document_is_not_sent_and_only_the_change_is_refused() -> None:
    mirror = Mirror()
    first = mirror.plan(DEV, [big("a"), big("b")])  # ~60 KiB: fits
    assert first.doc is not None
    mirror.published(DEV, first.doc)
    mirror.observe(DEV, first.doc.revision, first.doc)
    # a third one: over 64 KiB
    plan = mirror.plan(DEV, [big("a"), big("b"), big("c", kib=10)])
    assert plan.doc is None  # nothing published: the device keeps its last document
    assert set(mirror.rejected) == {"default/c"}  # "a" and "b" run as they were: not blamed
    assert "would be" in mirror.rejected["default/c"]
    assert "limit 65536" in mirror.rejected["default/c"]
    # the operator shrinks it: sent, refusal cleared
    plan = mirror.plan(DEV, [big("a"), big("b"), big("c", generation=2, kib=1)])
    assert plan.doc is not None
    assert plan.refusals_changed == {"default/c"}
    assert mirror.rejected == {}


def test_a_single_resource_over_its_own_bound_is_an_invalid_spec_and_never_sent() -> None:
    mirror = Mirror()
    huge = big("huge", kib=33)
    assert "at most 32768" in str(check_spec(huge.spec))
    assert mirror.plan(DEV, [huge]).doc is None  # nothing was ever sent: nothing to send
    assert mirror.rejected == {}  # refused as a spec, not by the mirror


def test_a_refused_resource_that_is_deleted_or_moves_loses_its_refusal() -> None:
    mirror = Mirror()
    mirror.plan(DEV, many(MAX_PROCESSES + 1))
    moved = resource("p-256", "other-1")
    assert mirror.plan(DEV, many(MAX_PROCESSES)).refusals_changed == {"default/p-256"}
    assert mirror.plan("other-1", [moved]).doc is not None
    assert mirror.rejected == {}


NAMES = st.text(alphabet="abc-", min_size=1, max_size=3).map(lambda s: f"r{s}r")
ARGS = st.lists(st.text(min_size=0, max_size=200), min_size=1, max_size=6)


@st.composite
def resource_sets(draw: st.DrawFn) -> list[Resource]:
    count = draw(st.integers(min_value=0, max_value=40))
    out = []
    for i in range(count):
        spec: dict[str, object] = {
            "deviceName": draw(st.sampled_from([DEV, DEV, "other-1", "Bad_Name"])),
            "command": draw(st.one_of(ARGS, st.just([]), st.just("not-a-list"))),
        }
        if draw(st.booleans()):
            spec["env"] = [{"name": "K", "value": draw(st.text(max_size=300))}]
        out.append(replace(resource(f"{draw(NAMES)}-{i}", DEV, spec=spec), generation=i + 1))
    return out


@settings(max_examples=150, deadline=None)
@given(resource_sets(), st.integers(min_value=200, max_value=4000))
def test_no_resource_set_makes_the_mirror_raise_or_send_what_the_wire_refuses(
    resources: list[Resource], limit: int
) -> None:
    mirror = Mirror(limit=limit)
    for device in (DEV, "other-1"):
        plan = mirror.plan(device, resources)
        if plan.doc is not None:
            assert len(encode(plan.doc)) <= limit
            assert len(plan.doc.processes) <= MAX_PROCESSES
            sent = {p.key for p in plan.doc.processes}
            assert not sent & set(mirror.rejected)
