"""Ingest: one MQTT message (topic, payload, retained) -> decoded, counted, fed to the tracker.

This is the bridge's hot path (thousands of heartbeats per second), so it stays small and
allocation-light: parsed topics are cached per topic string (the set of valid topics is bounded
by the fleet, and invalid ones are never cached), counters are plain ints exposed to Prometheus by
a collector at scrape time, and a healthy heartbeat returns the tracker's shared empty tuple.

Invariants:
- `feed` never raises. A message with an unknown topic, an oversized payload, invalid JSON or the
  wrong schema, or a live report whose `seq` does not advance within its session (a replay), is
  dropped and counted by reason (`devicefabric_invalid_messages_total`) and
  logged at WARNING (at most `LOG_BURST` lines per `LOG_WINDOW`, then a count of the rest).
- The topic names the device; a payload is only ever data about that topic's device (the brokers'
  ACLs make the topic trustworthy; nothing in a payload can name another device).
- An empty payload is a retained document being cleared: for `desired` it means the broker
  retains nothing for that device; for other kinds it is ignored.
- Other bridges' sync markers are skipped silently, and so are the logs request/reply topics
  (`config.topics.LOGS_KINDS`): they are not state, and not this module's to decode or count.
- Every retained document with a valid topic is recorded in the `ledger` (even one that then
  fails to decode: it was delivered, re-reading it would bring the same bytes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

from devicefabric.bridge.mirroring import Mirror
from devicefabric.bridge.replaying import ReplayLedger
from devicefabric.bridge.tracking import NOTHING, Change, DeviceTracker
from devicefabric.config.errors import PayloadError, TopicError
from devicefabric.config.topics import LOGS_KINDS, DeviceTopic, ParsedTopic, Topics
from devicefabric.config.wire import (
    MAX_PAYLOAD_BYTES,
    Report,
    decode_desired,
    decode_heartbeat,
    decode_report,
    decode_status,
)

log = logging.getLogger("devicefabric.bridge.ingest")

LOG_WINDOW: Final = 10.0
LOG_BURST: Final = 20
MAX_CACHED_TOPICS: Final = 200_000
KINDS: Final = tuple(kind.value for kind in DeviceTopic if kind not in LOGS_KINDS)
INVALID_REASONS: Final = ("topic", "oversized", "invalid_json", "schema", "sequence")


@dataclass(slots=True)
class IngestStats:
    """Plain counters (read by the metrics collector)."""

    messages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVALID_REASONS, 0))


class Ingest:
    """Decode and dispatch; see the module doc."""

    def __init__(
        self,
        topics: Topics,
        tracker: DeviceTracker,
        mirror: Mirror,
        *,
        limit: int = MAX_PAYLOAD_BYTES,
        ledger: ReplayLedger | None = None,
    ) -> None:
        self.topics = topics
        self.tracker = tracker
        self.mirror = mirror
        self.ledger = ledger
        self.stats = IngestStats()
        self._limit = limit
        self._parsed: dict[str, ParsedTopic] = {}
        self._log_window_start = 0.0
        self._logged = 0
        self._suppressed = 0

    def feed(  # noqa: C901, PLR0911 - one branch per topic kind reads best on the hot path
        self, topic: str, payload: bytes, now: float, *, retained: bool = False
    ) -> tuple[Change, ...]:
        """Handle one message received at `now` (bridge monotonic clock)."""
        parsed = self._parsed.get(topic)
        if parsed is None:
            parsed = self._parse(topic, now)
            if parsed is None:
                return NOTHING
        kind = parsed.kind
        device = parsed.device
        if kind is None or device is None:  # bridge/status is not subscribed; ignore if it comes
            return NOTHING
        if kind in LOGS_KINDS:  # request/reply, not state: not this module's to decode
            return NOTHING
        self.stats.messages[kind] += 1
        if retained and self.ledger is not None:
            self.ledger.saw(device, kind)
        try:
            if kind is DeviceTopic.HEARTBEAT:
                return self.tracker.heartbeat(device, decode_heartbeat(payload, self._limit), now)
            if not payload:
                if kind is DeviceTopic.DESIRED:
                    self.mirror.observe(device, None)
                return NOTHING
            if kind is DeviceTopic.STATUS:
                doc = decode_status(payload, self._limit)
                return self.tracker.status(device, doc, now, retained=retained)
            if kind is DeviceTopic.REPORT:
                report = decode_report(payload, self._limit)
                if not retained:
                    self._check_sequence(device, report)
                return self.tracker.report(device, report, now, retained=retained)
            desired = decode_desired(payload, self._limit)
            self.mirror.observe(device, desired.revision, desired)
        except PayloadError as exc:
            self._invalid(exc.reason, now, f"{exc}", device=device, topic=topic)
        return NOTHING

    def _check_sequence(self, device: str, report: Report) -> None:
        """A live report must advance its session's `seq`: anything else is a replay."""
        last = self.tracker.last_report(device)
        if last is not None and last.session == report.session and report.seq <= last.seq:
            raise PayloadError(
                "report", "sequence", f"seq {report.seq} <= {last.seq} of this session"
            )

    def _parse(self, topic: str, now: float) -> ParsedTopic | None:
        try:
            parsed = self.topics.parse(topic)
        except TopicError as exc:
            if not self.topics.is_sync_marker(topic):
                self._invalid("topic", now, str(exc), topic=topic[:200])
            return None
        if len(self._parsed) < MAX_CACHED_TOPICS:
            self._parsed[topic] = parsed
        return parsed

    def _invalid(self, reason: str, now: float, detail: str, **context: str) -> None:
        self.stats.invalid[reason] = self.stats.invalid.get(reason, 0) + 1
        if now - self._log_window_start >= LOG_WINDOW:
            if self._suppressed:
                log.warning("%d more invalid messages dropped without a log line", self._suppressed)
            self._log_window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged >= LOG_BURST:
            self._suppressed += 1
            return
        self._logged += 1
        log.warning("dropped invalid message: %s", detail, extra={"reason": reason, **context})
