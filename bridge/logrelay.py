"""Process logs from the devices: one MQTT request, its reply chunks, every part of it bounded.

`LogRelay.fetch(device, namespace, name, ...)` publishes a `logs/request` (QoS 1, not retained) to
the device and collects the `logs/reply` chunks that carry the request's id, in `seq` order, until
the one marked `end`; the MQTT handler feeds every reply to `on_reply`. Errors are one typed
exception, `LogsError(status, message)`, which the HTTP route turns into a response:

- the device does not answer within `timeout`: 504, "device X did not answer within N s" (a
  request never hangs);
- more than `rate` requests a second for one device (after a `burst`): 429;
- more than `max_pending` requests waiting at once (all devices): 503;
- the device answers with an error (no such process): 404 with the device's words.

Invariants: a reply is taken only from the device the request went to and only while its
request waits (anything else, malformed or late, is dropped and counted); a request's chunks are
kept at most `MAX_CHUNKS` deep, so a device cannot grow the bridge's memory by replying forever.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from devicefabric.bridge.errors import BridgeError
from devicefabric.bridge.http import Response, Stream
from devicefabric.config.errors import PayloadError
from devicefabric.config.logcodec import DEFAULT_LOG_TAIL, MAX_LOG_TAIL
from devicefabric.config.topics import Topics
from devicefabric.config.wire import LogLine, LogReply, LogRequest, decode_log_reply, encode

log = logging.getLogger("devicefabric.bridge.logs")

DEFAULT_TIMEOUT: Final = 5.0  # s a device has to answer (all chunks)
DEFAULT_RATE: Final = 2.0  # requests a second per device...
DEFAULT_BURST: Final = 5  # ...after this many at once
MAX_PENDING: Final = 64  # requests waiting at once, all devices together
MAX_CHUNKS: Final = 256  # chunks queued for one request (a device replying forever stops here)


class LogsError(BridgeError):
    """A logs request that cannot be answered; `status` is the HTTP status to say it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Pending:
    device: str
    replies: asyncio.Queue[LogReply] = field(default_factory=lambda: asyncio.Queue(MAX_CHUNKS))


class LogRelay:
    """Logs requests and their replies; see the module doc."""

    def __init__(
        self,
        topics: Topics,
        publish: Callable[[str, bytes], bool],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.topics = topics
        self.publish = publish  # (topic, payload) -> sent; QoS 1, not retained
        self.timeout = timeout
        self.rate, self.burst, self.max_pending = rate, burst, max_pending
        self._pending: dict[str, _Pending] = {}
        self._recent: dict[str, deque[float]] = {}  # device -> times of its recent requests
        self.dropped = 0  # replies dropped: malformed, unknown id, wrong device, overflow

    def __len__(self) -> int:
        return len(self._pending)

    def on_reply(self, device: str, payload: bytes) -> None:
        """A `logs/reply` from `device` (the MQTT handler; never raises)."""
        try:
            reply = decode_log_reply(payload)
        except PayloadError as exc:
            self.dropped += 1
            log.info("logs reply dropped: %s", exc, extra={"device": device})
            return
        pending = self._pending.get(reply.id)
        if pending is None or pending.device != device:
            self.dropped += 1  # late (timed out), unknown, or not the device we asked
            return
        try:
            pending.replies.put_nowait(reply)
        except asyncio.QueueFull:
            self.dropped += 1

    def _admit(self, device: str) -> None:
        if len(self._pending) >= self.max_pending:
            raise LogsError(503, f"too many logs requests waiting ({self.max_pending}); retry")
        now = time.monotonic()
        window = self.burst / self.rate  # at most `burst` requests in any such window
        recent = self._recent.get(device)
        if recent is None:
            if len(self._recent) > 10 * self.max_pending:
                self._recent.clear()  # bounded: idle devices start afresh
            recent = self._recent[device] = deque(maxlen=self.burst)
        while recent and now - recent[0] >= window:
            recent.popleft()
        if len(recent) >= self.burst:
            wait = window - (now - recent[0])
            raise LogsError(
                429, f"too many logs requests for device {device}; retry in {wait:.1f}s"
            )
        recent.append(now)

    async def fetch(
        self,
        device: str,
        namespace: str,
        name: str,
        *,
        tail: int,
        since_seconds: int | None = None,
        stream: str = "both",
        limited: bool = True,
    ) -> list[LogLine]:
        """The lines the device keeps for `namespace/name`, oldest first; `LogsError` else.
        `limited=False` (a follower: bounded by the number of followers) skips the per-device
        rate."""
        if limited:
            self._admit(device)
        elif len(self._pending) >= self.max_pending:
            raise LogsError(503, f"too many logs requests waiting ({self.max_pending}); retry")
        request_id = secrets.token_hex(8)
        request = LogRequest.model_validate(
            {
                "id": request_id,
                "namespace": namespace,
                "name": name,
                "tail": tail,
                "sinceSeconds": since_seconds,
                "stream": stream,
            }
        )
        pending = self._pending[request_id] = _Pending(device)
        try:
            if not self.publish(self.topics.logs_request(device), encode(request)):
                raise LogsError(503, "the bridge's MQTT link is down; retry")
            return await self._collect(device, pending)
        finally:
            del self._pending[request_id]

    async def _collect(self, device: str, pending: _Pending) -> list[LogLine]:
        chunks: dict[int, LogReply] = {}
        last: int | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while last is None or len(chunks) <= last:
                    reply = await pending.replies.get()
                    chunks[reply.seq] = reply
                    if reply.end:
                        last = reply.seq
        except TimeoutError:
            raise LogsError(
                504, f"device {device} did not answer within {self.timeout:.0f}s"
            ) from None
        error = next((c.error for c in chunks.values() if c.error), None)
        if error is not None:
            raise LogsError(404, f"device {device}: {error}")
        return [line for seq in sorted(chunks) for line in chunks[seq].lines]


# -- HTTP: GET /logs/<namespace>/<name>?tail=N&sinceSeconds=S&stream=..&follow=1 ------------------
MAX_FOLLOWERS: Final = 8  # `logs -f` streams at once (each polls its device)
FOLLOW_INTERVAL: Final = 0.5  # s between a follower's requests (new lines within a second)
FOLLOW_WINDOW: Final = 3  # s a follower's request looks back (lines seen are not sent twice)


def render(lines: list[LogLine]) -> bytes:
    """What `logs` prints: one line each, as the process printed it."""
    return "".join(f"{line.l}\n" for line in lines).encode()


@dataclass(slots=True)
class LogServer:
    """The `/logs/` route: resource -> device -> `LogRelay.fetch`, errors as one-line bodies."""

    relay: LogRelay
    resolve: Callable[[str], str]  # key -> the device to ask; LogsError when there is none
    followers: int = 0

    async def __call__(self, rest: str, query: Mapping[str, str]) -> Response | Stream:
        namespace, _, name = rest.partition("/")
        try:
            device = self.resolve(f"{namespace}/{name}")
        except LogsError as exc:
            return _text(exc.status, str(exc))
        try:
            tail = int(query.get("tail", str(DEFAULT_LOG_TAIL)))
            since = int(query["sinceSeconds"]) if "sinceSeconds" in query else None
        except ValueError:
            raise ValueError("tail and sinceSeconds must be integers") from None
        stream = query.get("stream", "both")
        if not 1 <= tail <= MAX_LOG_TAIL or stream not in ("stdout", "stderr", "both"):
            raise ValueError(f"tail must be 1..{MAX_LOG_TAIL}, stream stdout|stderr|both")
        try:
            lines = await self.relay.fetch(
                device, namespace, name, tail=tail, since_seconds=since, stream=stream
            )
        except LogsError as exc:
            return _text(exc.status, str(exc))
        if query.get("follow") not in ("1", "true"):
            return Response(200, render(lines), "text/plain; charset=utf-8")
        if self.followers >= MAX_FOLLOWERS:
            return _text(429, f"too many followers ({MAX_FOLLOWERS}); retry later")
        return Stream(self._follow(device, namespace, name, stream, lines))

    async def _follow(
        self, device: str, namespace: str, name: str, stream: str, first: list[LogLine]
    ) -> AsyncIterator[bytes]:
        """The first lines, then what is new every `FOLLOW_INTERVAL` until the client goes (a
        write to a closed connection ends it) or the device stops answering."""
        self.followers += 1
        try:
            yield render(first)
            anchor = first[-1] if first else None
            while True:
                await asyncio.sleep(FOLLOW_INTERVAL)
                try:
                    lines = await self.relay.fetch(
                        device, namespace, name, tail=MAX_LOG_TAIL, since_seconds=FOLLOW_WINDOW,
                        stream=stream, limited=False,
                    )  # fmt: skip
                except LogsError as exc:
                    yield f"[devicefabric: {exc}]\n".encode()
                    return
                fresh = after(lines, anchor)
                if fresh:
                    anchor = fresh[-1]
                    yield render(fresh)
        finally:
            self.followers -= 1


def after(lines: list[LogLine], anchor: LogLine | None) -> list[LogLine]:
    """The lines after `anchor` (the last one sent): those after its last occurrence, or, when
    it is out of the window, those newer than its second (pure)."""
    if anchor is None:
        return lines
    for index in range(len(lines) - 1, -1, -1):
        if lines[index] == anchor:
            return lines[index + 1 :]
    return [line for line in lines if line.t > anchor.t]


def _text(status: int, message: str) -> Response:
    return Response(status, f"{message}\n".encode(), "text/plain; charset=utf-8")
