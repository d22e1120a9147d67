"""Per-client refusals of the embedded broker: counted always, logged rate-limited.

A hostile or broken client can provoke a refusal per packet (a denied PUBLISH, a subscription
past the cap, a dropped delivery): logging each one let a single client write tens of MB of
logs per second. `RefusalLog` is the pure core deciding what to log:

- the first refusal of a kind for a client within `interval` seconds is logged in full;
- later ones in that interval are only counted; the next refusal after the interval (or
  `flush`, e.g. when the client disconnects) logs one summary line with the suppressed count;
- every refusal increments `counts[reason]`, the counter metric
  (`devicefabric_broker_refusals_total{reason}` in docs/security.md), whatever was logged.

So N refusals from one client produce at most about 2 x (elapsed / interval) + 2 lines. The
clock is passed in (`now`, seconds, monotonic), so the rules are tested with tables; state is
kept only for clients that were refused recently (`forget` drops a client's entries) and is
bounded by `max_keys` (the oldest windows are flushed first).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Final

DEFAULT_INTERVAL: Final = 10.0
DEFAULT_MAX_KEYS: Final = 10_000

MESSAGES: Final = {
    "publish_denied": "publish denied; dropped",
    "subscribe_denied": "subscription refused",
    "subscription_limit": "subscription refused: too many subscriptions",
    "outgoing_dropped": "QoS 0 delivery dropped: the client's outgoing queue is full",
    "slow_consumer": "client disconnected: its outgoing queue is full",
    "offline_queue_full": "message not queued: the offline session's queue is full",
    "connection_limit": "connection refused: too many connections",
    "accept_failed": "cannot accept connections (out of descriptors?); retrying",
}
"""The log message of each refusal reason (the `reason` field of the line); a refused CONNECT's
reasons (`bad_password`, `revoked`, ...) log as "connection refused"."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """What to log for one refusal: `suppressed` > 0 makes it a summary of a past window."""

    client_id: str
    reason: str
    detail: str
    suppressed: int


@dataclass(slots=True)
class _Window:
    start: float
    suppressed: int = 0
    last_detail: str = ""


class RefusalLog:
    """Decides which refusals are logged; counts all of them (see the module docstring)."""

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.counts: Counter[str] = Counter()
        self._windows: dict[tuple[str, str], _Window] = {}

    def note(self, client_id: str, reason: str, detail: str, now: float) -> list[LogLine]:
        """Record one refusal; the lines to log now (zero, one, or a summary and the new one)."""
        self.counts[reason] += 1
        key = (client_id, reason)
        window = self._windows.get(key)
        if window is not None and now - window.start < self.interval:
            window.suppressed += 1
            window.last_detail = detail
            return []
        lines = []
        if window is not None and window.suppressed:
            lines.append(LogLine(client_id, reason, window.last_detail, window.suppressed))
        if window is None and len(self._windows) >= self.max_keys:
            lines.extend(self._evict())
        self._windows[key] = _Window(start=now)
        lines.append(LogLine(client_id, reason, detail, 0))
        return lines

    def forget(self, client_id: str) -> list[LogLine]:
        """Drop a client's windows (it disconnected); summaries of what was suppressed."""
        lines = []
        for key in [k for k in self._windows if k[0] == client_id]:
            window = self._windows.pop(key)
            if window.suppressed:
                lines.append(LogLine(key[0], key[1], window.last_detail, window.suppressed))
        return lines

    def _evict(self) -> list[LogLine]:
        key = min(self._windows, key=lambda k: self._windows[k].start)
        window = self._windows.pop(key)
        if window.suppressed:
            return [LogLine(key[0], key[1], window.last_detail, window.suppressed)]
        return []

    def __len__(self) -> int:
        return len(self._windows)


def emit(
    logger: logging.Logger,
    lines: list[LogLine],
    *,
    level: int = logging.INFO,
    message: str | None = None,
) -> None:
    """Log `lines`: the reason's message for a first refusal, a count for a summary."""
    for line in lines:
        text = message or MESSAGES.get(line.reason, "connection refused")
        extra = {"client_id": line.client_id, "reason": line.reason}
        if line.suppressed:
            logger.log(
                level,
                "%s: %d more from this client (last: %s)",
                text,
                line.suppressed,
                line.detail,
                extra=extra,
            )
        else:
            logger.log(level, "%s: %s", text, line.detail, extra=extra)
