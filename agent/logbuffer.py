"""A bounded ring buffer of one process's output: stdout and stderr lines with their time.

Pure (bytes in, lines out; the caller passes the clock), so the process runner only feeds it the
chunks it reads from the child's pipes, and a table of chunks tests it:

    feed(stream, chunk, now)   split on b"\\n", keep the newest lines, evict the oldest
    end(stream, now)           the stream closed: its unterminated last line becomes a line
    tail(n, since, stream)     the newest n lines (oldest first), optionally only recent or of one
                               stream

Invariants:

- Memory is flat however much a process prints: each kept line costs its bytes plus
  `LINE_OVERHEAD` (its bookkeeping, so a flood of empty lines is bounded too) and the oldest lines
  go once the sum passes `budget`. Besides the lines, each stream holds at most `max_line` bytes of
  an unfinished line.
- A line longer than `max_line` bytes is kept as its first `max_line` bytes (cut on a UTF-8
  character boundary) followed by `CUT_MARKER`, as soon as it is that long; the rest of it, up to
  its newline, is dropped. A trailing carriage return is removed (CRLF output).
- Feeding costs one `bytes.split` of the chunk plus Python work only for the lines that can still
  be kept: a chunk of more lines than the budget holds skips straight to its newest ones, so a
  process writing 100 MB of tiny lines costs the agent little CPU per chunk.
- Every line gets a sequence number, counting dropped lines too, so a reader can ask for what came
  after the last line it saw and `dropped` says how many it could not have.
- Text is stored as bytes and decoded (invalid UTF-8 replaced) only when read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from devicefabric.agent.logfiles import RotatingFile
from devicefabric.runtime.clock import rfc3339

StreamName = Literal["stdout", "stderr"]
StreamChoice = Literal["stdout", "stderr", "both"]
STREAMS: Final[tuple[StreamName, ...]] = ("stdout", "stderr")

DEFAULT_BUDGET: Final = 64 * 1024  # per process: small enough for a constrained device
MIN_BUDGET: Final = 4 * 1024
MAX_BUDGET: Final = 64 * 1024 * 1024
MAX_LINE: Final = 4096  # a longer line is cut (at most a quarter of the budget)
LINE_OVERHEAD: Final = 64  # bytes charged per line for its bookkeeping
CUT_MARKER: Final = b" [...cut]"

_Entry = tuple[int, float, StreamName, bytes]  # seq, time, stream, text


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a process printed: when (`at`, seconds since the epoch), on which stream, what."""

    seq: int
    at: float
    stream: StreamName
    text: str

    @property
    def time(self) -> str:
        """`at` as RFC 3339 UTC (whole seconds, as the fabric writes every timestamp)."""
        return rfc3339(datetime.fromtimestamp(self.at, UTC))


class _Partial:
    """A stream's unfinished line, or the fact that it is inside a line already cut."""

    __slots__ = ("data", "skipping")

    def __init__(self) -> None:
        self.data = bytearray()
        self.skipping = False


class LogBuffer:
    """The newest lines of one process's stdout and stderr within `budget` bytes."""

    def __init__(self, budget: int = DEFAULT_BUDGET, *, max_line: int = MAX_LINE) -> None:
        if budget < MIN_BUDGET:
            raise ValueError(f"budget must be at least {MIN_BUDGET} bytes")
        self.budget = budget
        self.mirrors: dict[StreamName, RotatingFile] = {}  # `--log-file`: copies on disk
        self.max_line = max(1, min(max_line, budget // 4))
        self.dropped = 0  # lines evicted or skipped since the start
        self._lines: deque[_Entry] = deque()
        self._used = 0
        self._seq = 0
        self._partial = {name: _Partial() for name in STREAMS}

    # -- writing -------------------------------------------------------------------------------
    def feed(self, stream: StreamName, chunk: bytes, now: float) -> None:
        """Add what `stream` delivered: complete lines are kept, a last partial one waits (and
        the chunk goes to the stream's on-disk mirror as it is, when there is one)."""
        if not chunk:
            return
        mirror = self.mirrors.get(stream)
        if mirror is not None:
            mirror.write(chunk)
        partial = self._partial[stream]
        *complete, rest = chunk.split(b"\n")
        if complete:
            if partial.skipping:  # the first complete piece ends a line already cut
                partial.skipping = False
                first = 1
            else:
                if partial.data:
                    complete[0] = bytes(partial.data) + complete[0]
                    partial.data.clear()
                first = 0
            self._keep_newest(stream, complete, first, now)
        if partial.skipping:
            return
        partial.data += rest
        if len(partial.data) > self.max_line:
            self._add(stream, self._clip(bytes(partial.data)), now)
            partial.data.clear()
            partial.skipping = True

    def end(self, stream: StreamName, now: float) -> None:
        """`stream` closed: keep its unterminated last line, and start afresh on the next run."""
        partial = self._partial[stream]
        if partial.data:
            self._add(stream, self._clip(bytes(partial.data)), now)
            partial.data.clear()
        partial.skipping = False

    def _keep_newest(self, stream: StreamName, lines: list[bytes], first: int, now: float) -> None:
        """Add `lines[first:]`, skipping at once those older than what the budget can hold."""
        start = len(lines)
        cost = 0
        limit = self.max_line + len(CUT_MARKER)
        while start > first:
            cost += min(len(lines[start - 1]), limit) + LINE_OVERHEAD
            if cost > self.budget:
                break
            start -= 1
        skipped = start - first
        if skipped:
            self._seq += skipped
            self.dropped += skipped
        for index in range(start, len(lines)):
            self._add(stream, self._clip(lines[index]), now)

    def _clip(self, line: bytes) -> bytes:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) <= self.max_line:
            return line
        cut = self.max_line
        # Step back over UTF-8 continuation bytes (0b10xxxxxx) so no character is split.
        while cut > self.max_line - 3 and cut > 0 and line[cut] & 0xC0 == 0x80:
            cut -= 1
        return line[:cut] + CUT_MARKER

    def _add(self, stream: StreamName, text: bytes, now: float) -> None:
        self._seq += 1
        self._lines.append((self._seq, now, stream, text))
        self._used += len(text) + LINE_OVERHEAD
        while self._used > self.budget:
            _, _, _, old = self._lines.popleft()
            self._used -= len(old) + LINE_OVERHEAD
            self.dropped += 1

    # -- reading -------------------------------------------------------------------------------
    def tail(
        self,
        n: int | None = None,
        since: float | None = None,
        stream: StreamChoice = "both",
        *,
        after: int | None = None,
    ) -> list[LogLine]:
        """The newest `n` lines (all when None), oldest first.

        Only lines of `stream` ("both": either), at or after `since` (seconds since the epoch) and
        with a sequence number above `after` (the last one a reader saw) count.
        """
        if n is not None and n < 0:
            raise ValueError("n must not be negative")
        found: list[LogLine] = []
        if n == 0:
            return found
        for seq, at, name, text in reversed(self._lines):
            if after is not None and seq <= after:
                break  # sequence numbers only grow towards the newest line
            if (since is not None and at < since) or stream not in ("both", name):
                continue  # (the wall clock may step back, so an old time does not end the scan)
            found.append(LogLine(seq, at, name, text.decode("utf-8", "replace")))
            if n is not None and len(found) >= n:
                break
        found.reverse()
        return found

    @property
    def used(self) -> int:
        """The bytes charged against the budget now (at most `budget`)."""
        return self._used

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest line seen (0 before the first)."""
        return self._seq

    def __len__(self) -> int:
        return len(self._lines)

    def __iter__(self) -> Iterator[LogLine]:
        return iter(self.tail())
