"""Topic builders, parsers and filter matching: the ONLY place a topic string is spelled.

Layout under a configurable root (default `fabric/v1`):

    {root}/devices/{device}/status|heartbeat|report|desired
    {root}/devices/{device}/logs/request|logs/reply
    {root}/bridge/status

A device topic's kind (`DeviceTopic`) is everything after the device level: one level for the
state topics, two for the logs request/reply pair (`logs/...`, not retained; `all_logs` is the
filter over both for every device, which the observer is denied).

`Topics(root)` builds concrete topics and the wildcard filters the bridge and observer use;
`Topics.parse` is the inverse and raises `TopicError` for anything else. `matches` and `covers`
implement MQTT filter semantics for the access rules (`config.access`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from devicefabric.config.errors import TopicError
from devicefabric.config.names import is_device_name

DEFAULT_ROOT: Final = "fabric/v1"
# The device level of the bridge's sync markers; `_` can never start a device name. No `.`: NATS
# maps topic levels to subject tokens and disconnects a client naming a topic that contains one.
SYNC_MARKER_PREFIX: Final = "_sync-"

_DEVICES: Final = "devices"
_BRIDGE: Final = "bridge"
_STATUS: Final = "status"
_LOGS: Final = "logs"


class DeviceTopic(enum.StrEnum):
    """The kinds of per-device topic; the value is what follows the device level."""

    STATUS = "status"
    HEARTBEAT = "heartbeat"
    REPORT = "report"
    DESIRED = "desired"
    LOGS_REQUEST = f"{_LOGS}/request"  # bridge -> device, QoS 1, not retained
    LOGS_REPLY = f"{_LOGS}/reply"  # device -> bridge, chunks of one request, not retained


LOGS_KINDS: Final = frozenset({DeviceTopic.LOGS_REQUEST, DeviceTopic.LOGS_REPLY})
"""The request/reply kinds; the others are the device's state topics (the bridge's ingest)."""


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A parsed fabric topic: a device topic (`device` set) or the bridge status (`device` None)."""

    kind: DeviceTopic | None
    device: str | None

    @property
    def is_bridge_status(self) -> bool:
        return self.kind is None


def validate_root(root: str) -> str:
    """A root is one or more non-empty levels without wildcards, `$`, or a trailing slash."""
    levels = root.split("/")
    if not root or any(not level for level in levels):
        raise TopicError(root, "topic root must be non-empty levels separated by '/'")
    if any(ch in root for ch in "+#\x00") or root.startswith("$"):
        raise TopicError(root, "topic root must not contain '+', '#', NUL or start with '$'")
    return root


class Topics:
    """Builds and parses the fabric's topics under one root."""

    __slots__ = ("_device_prefix", "_nroot", "root")

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = validate_root(root)
        self._device_prefix = f"{root}/{_DEVICES}/"
        self._nroot = root.count("/") + 1

    # -- builders ------------------------------------------------------------------------------
    def device(self, device: str, kind: DeviceTopic) -> str:
        return f"{self._device_prefix}{device}/{kind.value}"

    def status(self, device: str) -> str:
        return self.device(device, DeviceTopic.STATUS)

    def heartbeat(self, device: str) -> str:
        return self.device(device, DeviceTopic.HEARTBEAT)

    def report(self, device: str) -> str:
        return self.device(device, DeviceTopic.REPORT)

    def desired(self, device: str) -> str:
        return self.device(device, DeviceTopic.DESIRED)

    def logs_request(self, device: str) -> str:
        return self.device(device, DeviceTopic.LOGS_REQUEST)

    def logs_reply(self, device: str) -> str:
        return self.device(device, DeviceTopic.LOGS_REPLY)

    def bridge_status(self) -> str:
        return f"{self.root}/{_BRIDGE}/{_STATUS}"

    def all_devices(self, kind: DeviceTopic) -> str:
        """The filter matching `kind` for every device: `{root}/devices/+/{kind}`."""
        return f"{self._device_prefix}+/{kind.value}"

    def all_logs(self) -> str:
        """The filter matching every device's logs topics, request and reply: `.../+/logs/#`."""
        return f"{self._device_prefix}+/{_LOGS}/#"

    def everything(self) -> str:
        """The filter matching every fabric topic: `{root}/#`."""
        return f"{self.root}/#"

    def sync_marker(self, token: str) -> str:
        """A topic only the bridge publishes to and receives: `{root}/devices/_sync-{token}/desired`.

        The bridge publishes an empty, non-retained message there after subscribing: the brokers
        deliver one connection's messages in order, so once it comes back every retained document
        of the subscription has been replayed. Its device level starts with `_`, which no device
        name can, so no device ever receives it, yet `devices/+/desired` covers it for the ACLs.
        A `.` of the token is written `-`: NATS refuses (and disconnects) a topic containing one.
        """
        level = SYNC_MARKER_PREFIX + token.replace(".", "-")
        return f"{self._device_prefix}{level}/{DeviceTopic.DESIRED.value}"

    def is_sync_marker(self, topic: str) -> bool:
        """True for any bridge's sync marker (`sync_marker`), whatever its token."""
        return topic.startswith(SYNC_MARKER_PREFIX, len(self._device_prefix)) and topic.startswith(
            self._device_prefix
        )

    # -- parser --------------------------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic:
        """Parse a concrete topic; raise `TopicError` unless it is a fabric topic."""
        if topic == self.bridge_status():
            return ParsedTopic(kind=None, device=None)
        if not topic.startswith(self._device_prefix):
            raise TopicError(topic, f"not under {self._device_prefix!r}")
        rest = topic[len(self._device_prefix) :]
        device, sep, last = rest.partition("/")  # `last` may be two levels: `logs/request`
        if not sep:
            raise TopicError(topic, "missing topic kind after the device name")
        try:
            kind = DeviceTopic(last)
        except ValueError:
            raise TopicError(topic, f"unknown topic kind {last[:40]!r}") from None
        if not is_device_name(device):
            raise TopicError(topic, f"{device!r} is not a valid device name")
        return ParsedTopic(kind=kind, device=device)


def validate_publish_topic(topic: str) -> str:
    """A topic one may publish to: non-empty, no wildcards, no NUL, not a `$` system topic."""
    if not topic:
        raise TopicError(topic, "empty topic")
    if any(ch in topic for ch in "+#\x00"):
        raise TopicError(topic, "wildcards and NUL are not allowed in a published topic")
    if topic.startswith("$"):
        raise TopicError(topic, "'$' topics are reserved for the broker")
    return topic


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching of a concrete `topic` (wildcards never match a leading `$`)."""
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, flevel in enumerate(flevels):
        if flevel == "#":
            return True
        if i >= len(tlevels):
            return False
        if flevel not in ("+", tlevels[i]):
            return False
    return len(flevels) == len(tlevels)


def covers(allowed: str, requested: str) -> bool:
    """True when every topic that `requested` (a filter) can match is matched by `allowed`."""
    if requested.startswith("$") and not allowed.startswith("$"):
        return False  # as in `matches`: a wildcard never grants a leading `$` level
    alevels = allowed.split("/")
    rlevels = requested.split("/")
    for i, alevel in enumerate(alevels):
        if alevel == "#":
            return True
        if i >= len(rlevels):
            return False
        rlevel = rlevels[i]
        if rlevel == "#":
            return False
        if alevel == "+":
            continue
        if alevel != rlevel:
            return False
    return len(alevels) == len(rlevels)


def is_valid_filter(topic_filter: str) -> bool:
    """MQTT rules for a subscription filter: `#` only last and alone, `+` alone in its level."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True
