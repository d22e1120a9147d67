"""Which subscription filters match a topic, without looking at every filter (sans-IO).

amqtt 0.12.1 checks every subscribed filter against every published topic (`Broker._matches` in
a loop over `_subscriptions`): with one filter per device that is O(devices) per message, and the
embedded broker's CPU grew with the square of the fleet (measured: 100% of a core at 5,000
devices). `FilterIndex` keeps exact filters in a set (one lookup) and wildcard filters in a trie
over topic levels (`+` one level, `#` this level and every one below), so a match costs
O(levels x wildcard branches) whatever the number of filters.

MQTT rules kept (3.1.1 section 4.7): `#` also matches the parent level (`a/#` matches `a`); a
topic starting with `$` is matched by no filter whose first level is a wildcard; a level is
compared exactly (empty levels included). The index stores filters as given; validating them is
the caller's job (amqtt refuses malformed filters before they are added).

Invariant: `match(topic)` returns exactly the added filters `f` with `matches(f, topic)`, each
once, for any topic and any set of added filters (tested against `matches` by property).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def matches(topic_filter: str, topic: str) -> bool:
    """The reference matcher: does `topic_filter` match `topic` (MQTT 3.1.1 rules)?"""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    fl, tl = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(fl):
        if level == "#":
            return i == len(fl) - 1
        if i >= len(tl) or level not in ("+", tl[i]):
            return False
    return len(fl) == len(tl)


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    here: str | None = None  # the filter that ends at this node
    hash_filter: str | None = None  # the filter `<path>/#` ending below this node


class FilterIndex:
    """A set of subscription filters that answers `match(topic)` fast (see the module doc)."""

    def __init__(self, filters: Iterable[str] = ()) -> None:
        self._exact: set[str] = set()
        self._root = _Node()
        self._wild = 0
        for f in filters:
            self.add(f)

    def __len__(self) -> int:
        return len(self._exact) + self._wild

    def __contains__(self, topic_filter: object) -> bool:
        if not isinstance(topic_filter, str):
            return False
        if not is_wildcard(topic_filter):
            return topic_filter in self._exact
        node, last = self._walk(topic_filter)
        if node is None:
            return False
        return (node.hash_filter if last == "#" else node.here) == topic_filter

    def add(self, topic_filter: str) -> None:
        if not is_wildcard(topic_filter):
            self._exact.add(topic_filter)
            return
        levels = topic_filter.split("/")
        node = self._root
        for level in levels[:-1] if levels[-1] == "#" else levels:
            node = node.children.setdefault(level, _Node())
        if levels[-1] == "#":
            if node.hash_filter is None:
                self._wild += 1
            node.hash_filter = topic_filter
        else:
            if node.here is None:
                self._wild += 1
            node.here = topic_filter

    def discard(self, topic_filter: str) -> None:
        if not is_wildcard(topic_filter):
            self._exact.discard(topic_filter)
            return
        levels = topic_filter.split("/")
        path = levels[:-1] if levels[-1] == "#" else levels
        trail = [self._root]
        for level in path:
            child = trail[-1].children.get(level)
            if child is None:
                return
            trail.append(child)
        node = trail[-1]
        if levels[-1] == "#":
            if node.hash_filter is None:
                return
            node.hash_filter = None
        else:
            if node.here is None:
                return
            node.here = None
        self._wild -= 1
        for level, parent in zip(reversed(path), reversed(trail[:-1]), strict=True):
            child = parent.children[level]
            if child.children or child.here is not None or child.hash_filter is not None:
                break
            del parent.children[level]

    def match(self, topic: str) -> list[str]:
        """Every added filter matching `topic`, each once (exact ones first)."""
        found = [topic] if topic in self._exact else []
        if not self._wild:
            return found
        dollar = topic.startswith("$")
        frontier = [self._root]
        for depth, level in enumerate(topic.split("/")):
            frontier = _step(frontier, level, found, wild=not (dollar and depth == 0))
            if not frontier:
                return found
        for node in frontier:
            if node.here is not None:
                found.append(node.here)
            if node.hash_filter is not None:  # `a/#` matches `a` itself
                found.append(node.hash_filter)
        return found

    def _walk(self, topic_filter: str) -> tuple[_Node | None, str]:
        levels = topic_filter.split("/")
        node: _Node | None = self._root
        for level in levels[:-1] if levels[-1] == "#" else levels:
            node = node.children.get(level) if node is not None else None
        return node, levels[-1]


def _step(frontier: list[_Node], level: str, found: list[str], *, wild: bool) -> list[_Node]:
    """One topic level: collect the `#` filters ending here, return the nodes one level down.

    `wild` False (the first level of a `$` topic): no `+` or `#` matches it.
    """
    following: list[_Node] = []
    for node in frontier:
        if wild and node.hash_filter is not None:
            found.append(node.hash_filter)
        child = node.children.get(level)
        if child is not None:
            following.append(child)
        plus = node.children.get("+") if wild else None
        if plus is not None:
            following.append(plus)
    return following
