"""The logs request/reply codec without pydantic: the agent decodes requests and writes replies.

The bridge asks a device for a process's output on `{root}/devices/{device}/logs/request`
(`wire.LogRequest`) and the agent answers on `.../logs/reply` with one or more chunks
(`wire.LogReply`): `seq` 0, 1, ..., the last with `end: true`, each under the payload limit.

- `decode_log_request` accepts and refuses exactly what `wire.decode_log_request` (the pydantic
  model: strict, `extra="forbid"`) does, fills in the same defaults and encodes to the same
  canonical bytes (a parity test holds the two to that, as `config.lean` is held for `desired`);
  errors are `PayloadError` (`oversized`, `invalid_json`, `schema`) and nothing else.
- `reply_chunks` is pure: lines in, encoded chunks out, each at most `limit` bytes. A line longer
  than `MAX_LOG_LINE` characters, or too big for a chunk of its own, is cut and ends with a marker
  saying how many characters were cut (`cut_marker`): never dropped, never silently shortened.
  An `error` (e.g. "no such process", cut to `MAX_LOG_ERROR`) rides on the last chunk.

Limits are here and the pydantic models use them too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, Literal

from devicefabric.config.lean import INT63, MAX_PAYLOAD_BYTES, MAX_TOKEN, SESSION_PATTERN
from devicefabric.config.names import DEVICE_NAME_PATTERN, MAX_OBJECT_NAME, OBJECT_NAME_PATTERN
from devicefabric.config.strictjson import (
    SchemaError,
    canonical_json,
    check_int,
    check_object,
    check_str,
    decode_with,
)

MAX_LOG_TAIL: Final = 10_000
DEFAULT_LOG_TAIL: Final = 100
MAX_LOG_LINE: Final = 8192  # characters of one line's text (`l`)
MAX_LOG_ERROR: Final = 1024  # characters of a reply's `error`
LOG_ID_PATTERN: Final = SESSION_PATTERN  # a request id is a token like a session id
LogStream = Literal["stdout", "stderr", "both"]
LOG_STREAMS: Final = ("stdout", "stderr", "both")
LineStream = Literal["o", "e"]  # a line's stream: stdout, stderr
MIN_CHUNK_BYTES: Final = 512  # room for the envelope, a timestamp and a cut line's marker

_ID_RE: Final = re.compile(LOG_ID_PATTERN)
_NAMESPACE_RE: Final = re.compile(DEVICE_NAME_PATTERN)
_NAME_RE: Final = re.compile(OBJECT_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class LogRequest:
    """A decoded logs request (the attributes of `wire.LogRequest`, defaults filled in)."""

    id: str
    namespace: str
    name: str
    tail: int = DEFAULT_LOG_TAIL
    since_seconds: int | None = None
    stream: LogStream = "both"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "namespace": self.namespace,
            "name": self.name,
            "tail": self.tail,
            "stream": self.stream,
        }
        if self.since_seconds is not None:
            out["sinceSeconds"] = self.since_seconds
        return out


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a process's output: RFC 3339 time, stream (`o`/`e`), text."""

    t: str
    s: LineStream
    l: str  # noqa: E741 - the wire name: short keys keep chunks small

    def to_wire(self) -> dict[str, str]:
        return {"t": self.t, "s": self.s, "l": self.l}


# -- request -----------------------------------------------------------------------------------
_REQUEST_FIELDS: Final = {
    **{k: k for k in ("id", "namespace", "name", "tail", "stream")},
    "sinceSeconds": "since_seconds",
}


def _request(doc: object) -> LogRequest:
    raw = check_object(doc, "", _REQUEST_FIELDS, ("id", "namespace", "name"))
    since = raw.get("since_seconds")
    stream = raw.get("stream", "both")
    if type(stream) is not str or stream not in LOG_STREAMS:
        raise SchemaError("stream", "Input should be 'stdout', 'stderr' or 'both'")
    return LogRequest(
        id=check_str(raw["id"], "id", _ID_RE, 1, MAX_TOKEN),
        namespace=check_str(raw["namespace"], "namespace", _NAMESPACE_RE, 0, 63),
        name=check_str(raw["name"], "name", _NAME_RE, 0, MAX_OBJECT_NAME),
        tail=check_int(raw.get("tail", DEFAULT_LOG_TAIL), "tail", 1, MAX_LOG_TAIL),
        since_seconds=None if since is None else check_int(since, "sinceSeconds", 0, INT63 - 1),
        stream=stream,  # type: ignore[arg-type]  # checked against LOG_STREAMS above
    )


def decode_log_request(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> LogRequest:
    """Decode a logs request; `PayloadError` (and nothing else) when it is not one."""
    return decode_with("logs_request", payload, limit, _request)


def encode_log_request(request: LogRequest) -> bytes:
    return canonical_json(request.to_wire())


# -- reply chunks ------------------------------------------------------------------------------
def cut_marker(cut: int) -> str:
    """What ends a text that was cut: how many characters of it are missing."""
    return f" [... {cut} characters cut]"


def _cut(text: str, keep: int) -> str:
    """`text` shortened to its first `keep` characters, plus the marker."""
    return text[:keep] + cut_marker(len(text) - keep)


def _bounded(text: str, longest: int, size: Callable[[str], int], room: int) -> str:
    """`text` if it has at most `longest` characters and `size(text) <= room`, else the longest
    cut of it (marker included) that does; `ValueError` when not even the marker fits."""
    if len(text) <= longest and size(text) <= room:
        return text

    def fits(keep: int) -> bool:
        cut = _cut(text, keep)
        return len(cut) <= longest and size(cut) <= room

    if not fits(0):
        raise ValueError(f"{room} bytes cannot hold even a cut text")
    lo, hi = 0, len(text)  # fits(lo); the longest fitting prefix is in [lo, hi)
    while hi - lo > 1:  # the size grows with `keep`: the marker shrinks a digit at most
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return _cut(text, lo)


def _chunk(request_id: str, seq: int, lines: Sequence[LogLine], *, end: bool) -> dict[str, object]:
    return {"id": request_id, "seq": seq, "lines": [x.to_wire() for x in lines], "end": end}


def _size(doc: dict[str, object]) -> int:
    return len(canonical_json(doc))


def reply_chunks(
    request_id: str,
    lines: Iterable[LogLine],
    *,
    error: str | None = None,
    limit: int = MAX_PAYLOAD_BYTES,
) -> list[bytes]:
    """The encoded reply chunks of one request: `seq` 0.., the last `end: true` (and `error`).

    Lines keep their order and are packed greedily; every chunk is at most `limit` bytes. A line
    longer than `MAX_LOG_LINE` or too big for a chunk of its own is cut, ending in `cut_marker`;
    so is an `error` longer than `MAX_LOG_ERROR` or than a chunk holds. No lines at all give one
    chunk with none. `ValueError` when `limit` < `MIN_CHUNK_BYTES`.
    """
    if limit < MIN_CHUNK_BYTES:
        raise ValueError(f"a reply chunk needs at least {MIN_CHUNK_BYTES} bytes, not {limit}")
    chunks: list[list[LogLine]] = [[]]
    used = _size(_chunk(request_id, 0, [], end=False))  # `false` is one byte longer than `true`
    for raw in lines:
        # what a chunk of its own (the next one: its `seq` may take a digit more) has room for
        room = limit - _size(_chunk(request_id, len(chunks), [], end=False))
        text = _bounded(raw.l, MAX_LOG_LINE, partial(_line_bytes, raw.t, raw.s), room)
        size = _line_bytes(raw.t, raw.s, text)
        if chunks[-1] and used + 1 + size > limit:  # `,` before a line that is not the first
            chunks.append([])
            used = _size(_chunk(request_id, len(chunks) - 1, [], end=False))
        used += size + (1 if chunks[-1] else 0)
        chunks[-1].append(LogLine(raw.t, raw.s, text))
    docs = [_chunk(request_id, seq, chunk, end=False) for seq, chunk in enumerate(chunks)]
    docs[-1]["end"] = True
    if error is not None:
        if _size(docs[-1] | {"error": error}) > limit or len(error) > MAX_LOG_ERROR:
            # the error ends a last chunk of its own, cut to what that chunk holds
            docs[-1]["end"] = False
            envelope = _chunk(request_id, len(docs), [], end=True)
            docs.append(envelope)
            room = limit - _size(envelope | {"error": ""}) + 2  # `""` is in the envelope
            error = _bounded(error, MAX_LOG_ERROR, _json_string_bytes, room)
        docs[-1]["error"] = error
    return [canonical_json(doc) for doc in docs]


def _line_bytes(t: str, s: str, text: str) -> int:
    """Bytes one line takes in a chunk's `lines` (without the `,` between two)."""
    return len(canonical_json({"t": t, "s": s, "l": text}))


def _json_string_bytes(text: str) -> int:
    """Bytes `text` takes as a JSON string, quotes included."""
    return len(canonical_json(text))
