"""The filter index answers exactly what the reference matcher does, for any filters and topic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devicefabric.broker.topicindex import FilterIndex, matches

FILTERS = [
    "a/b",
    "a/+",
    "a/#",
    "+/b",
    "#",
    "+/+",
    "a/b/c",
    "$SYS/#",
    "$SYS/x",
    "+/#",
    "a//c",
    "a/+/c",
    "fabric/v1/devices/+/status",
    "fabric/v1/devices/d1/desired",
]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("a/b", {"a/b", "a/+", "a/#", "+/b", "#", "+/+", "+/#"}),
        ("a", {"a/#", "#", "+/#"}),  # `#` matches the parent level
        ("a/b/c", {"a/#", "#", "a/b/c", "+/#", "a/+/c"}),
        ("$SYS/x", {"$SYS/#", "$SYS/x"}),  # no leading wildcard matches a `$` topic
        ("a//c", {"a/#", "#", "+/#", "a//c", "a/+/c"}),
        ("fabric/v1/devices/d1/status", {"#", "+/#", "fabric/v1/devices/+/status"}),
        ("fabric/v1/devices/d1/desired", {"#", "+/#", "fabric/v1/devices/d1/desired"}),
        ("b", {"#", "+/#"}),
    ],
)
def test_match_table(topic: str, expected: set[str]) -> None:
    found = FilterIndex(FILTERS).match(topic)
    assert len(found) == len(set(found)), "a filter reported twice"
    assert set(found) == expected
    assert expected == {f for f in FILTERS if matches(f, topic)}


def test_discard_removes_only_that_filter_and_prunes() -> None:
    index = FilterIndex(FILTERS)
    for f in ("a/#", "a/+", "a/b", "+/#", "#"):
        assert f in index
        index.discard(f)
        assert f not in index
        index.discard(f)  # twice: nothing happens
    assert set(index.match("a/b")) == {"+/b", "+/+"}
    assert len(index) == len(FILTERS) - 5
    for f in FILTERS:
        index.discard(f)
    assert len(index) == 0
    assert index.match("a/b") == []
    assert not index._root.children  # every emptied branch pruned


LEVEL = st.sampled_from(["a", "b", "", "$x", "dev-1"])
FILTER_LEVEL = st.sampled_from(["a", "b", "", "+", "$x", "dev-1"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVEL, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@settings(max_examples=300, deadline=None)
@given(
    added=st.lists(filters(), max_size=12),
    removed=st.lists(filters(), max_size=6),
    topic=st.lists(LEVEL, min_size=1, max_size=5).map("/".join),
)
def test_the_index_agrees_with_the_reference_matcher(
    added: list[str], removed: list[str], topic: str
) -> None:
    index = FilterIndex(added)
    for f in removed:
        index.discard(f)
    kept = set(added) - set(removed)
    found = index.match(topic)
    assert len(found) == len(set(found))
    assert set(found) == {f for f in kept if matches(f, topic)}
    assert len(index) == len(kept)
