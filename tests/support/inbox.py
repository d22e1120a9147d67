"""What an MQTT test client received: `Message`s in an `Inbox` with deadline-based waits.

Every client of the kit (the paho `Client` of `tests.support.mqtt`, the in-process broker's
`Peer`, the benchmarks' watchers) records what it receives in one `Inbox`: a thread-safe list
that paho's loop thread appends to and the test waits on. `wait_for(topic_filter, match)` returns
the first message, already received or arriving, on the filter that passes `match` (a predicate,
or the exact payload as bytes); it never sleeps to settle.

To show that something was *not* delivered, publish a marker after the forbidden act and wait for
it: the brokers deliver one connection's messages in order, so anything routed before the marker
would have arrived first (`tests.support.mqtt.barrier`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from devicefabric.config.topics import matches

TIMEOUT: Final = 5.0
Match = Callable[["Message"], bool] | bytes | None


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    at: float = field(default_factory=time.monotonic, compare=False)  # when it was received

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")


def _passes(message: Message, topic_filter: str, match: Match) -> bool:
    if not matches(topic_filter, message.topic):
        return False
    if match is None:
        return True
    if isinstance(match, bytes):
        return message.payload == match
    return match(message)


class Inbox:
    """Thread-safe record of received messages with deadline-based waits."""

    def __init__(self, patience: float = TIMEOUT) -> None:
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self.patience = patience  # the default wait: longer on a broker whose delivery may lag

    def add(self, message: Message) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def messages(self, topic_filter: str = "#", match: Match = None) -> list[Message]:
        with self._cond:
            return [m for m in self._messages if _passes(m, topic_filter, match)]

    def topics(self) -> list[str]:
        with self._cond:
            return [m.topic for m in self._messages]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(
        self,
        topic_filter: str = "#",
        match: Match = None,
        timeout: float | None = None,
        *,
        since: float = 0.0,
    ) -> Message:
        """The first message on `topic_filter` passing `match` (received at or after `since`, a
        `time.monotonic()` value), already here or arriving within `timeout`."""
        timeout = self.patience if timeout is None else timeout
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                seen = 0 if seen > len(self._messages) else seen  # cleared meanwhile
                for message in self._messages[seen:]:
                    if message.at >= since and _passes(message, topic_filter, match):
                        return message
                seen = len(self._messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    last = [(m.topic, m.payload[:40]) for m in self._messages[-10:]]
                    want = f" {match!r}" if isinstance(match, bytes) else ""
                    raise AssertionError(
                        f"no message on {topic_filter!r}{want} within {timeout}s; last: {last}"
                    )
                self._cond.wait(left)

    def wait_count(self, count: int, topic_filter: str = "#", timeout: float | None = None) -> None:
        """Until at least `count` messages on `topic_filter` have been received."""
        deadline = time.monotonic() + (self.patience if timeout is None else timeout)
        with self._cond:
            while (got := sum(matches(topic_filter, m.topic) for m in self._messages)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{got} of {count} messages on {topic_filter!r}")
                self._cond.wait(left)
