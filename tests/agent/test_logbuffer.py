"""The log ring buffer: chunks in, newest lines out, within its byte budget."""

from __future__ import annotations

import sys

import pytest

from devicefabric.agent.logbuffer import (
    CUT_MARKER,
    LINE_OVERHEAD,
    LogBuffer,
    LogLine,
    StreamChoice,
    StreamName,
)

Feed = tuple[StreamName, bytes] | tuple[StreamName, None]  # None: the stream ends


def texts(buffer: LogBuffer, **query: object) -> list[str]:
    return [line.text for line in buffer.tail(**query)]  # type: ignore[arg-type]


def fed(*chunks: Feed, budget: int = 4096, max_line: int = 4096) -> LogBuffer:
    buffer = LogBuffer(budget, max_line=max_line)
    for now, (stream, chunk) in enumerate(chunks):
        if chunk is None:
            buffer.end(stream, float(now))
        else:
            buffer.feed(stream, chunk, float(now))
    return buffer


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        pytest.param([("stdout", b"a\nb\n")], ["a", "b"], id="whole lines"),
        pytest.param([("stdout", b"")], [], id="nothing"),
        pytest.param([("stdout", b"a\nb")], ["a"], id="a partial line waits"),
        pytest.param([("stdout", b"a\nb"), ("stdout", None)], ["a", "b"], id="end keeps it"),
        pytest.param(
            [("stdout", b"he"), ("stdout", b"llo\nwo"), ("stdout", b"rld\n")],
            ["hello", "world"],
            id="lines across chunks",
        ),
        pytest.param([("stdout", b"\n\n")], ["", ""], id="empty lines count"),
        pytest.param([("stdout", b"dos\r\n")], ["dos"], id="CRLF"),
        pytest.param(
            [("stdout", b"o1\no"), ("stderr", b"e1\ne"), ("stdout", b"2\n")],
            ["o1", "e1", "o2"],
            id="streams keep their own partial line",
        ),
        pytest.param([("stdout", b"\xff\xfe\n")], ["\ufffd\ufffd"], id="invalid utf-8 replaced"),
    ],
)
def test_lines_from_chunks(chunks: list[Feed], lines: list[str]) -> None:
    assert texts(fed(*chunks)) == lines


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        pytest.param([("stdout", b"x" * 20 + b"\nok\n")], ["x" * 8 + "[cut]", "ok"], id="in one"),
        pytest.param(
            [("stdout", b"x" * 5), ("stdout", b"y" * 10), ("stdout", b"z" * 10 + b"\nok\n")],
            ["xxxxxyyy[cut]", "ok"],
            id="cut as soon as too long, the rest dropped up to its newline",
        ),
        pytest.param([("stdout", b"x" * 8 + b"\n")], ["x" * 8], id="exactly the bound"),
        pytest.param([("stdout", "xééééé\n".encode())], ["xééé[cut]"], id="never splits a char"),
        pytest.param(
            [("stdout", b"x" * 9), ("stdout", None), ("stdout", b"ok\n")],
            ["x" * 8 + "[cut]", "ok"],
            id="end resets a cut line",
        ),
    ],
)
def test_a_long_line_is_cut_with_a_marker(chunks: list[Feed], lines: list[str]) -> None:
    marker = CUT_MARKER.decode()
    got = texts(fed(*chunks, max_line=8))
    assert got == [line.replace("[cut]", marker) for line in lines]


def test_the_oldest_lines_go_first_and_the_budget_holds() -> None:
    buffer = LogBuffer(4096)
    for i in range(1000):
        buffer.feed("stdout", f"line {i}\n".encode(), float(i))
        assert buffer.used <= 4096
    kept = buffer.tail()
    assert kept[-1].text == "line 999"
    assert [line.seq for line in kept] == list(range(1001 - len(kept), 1001))
    assert len(kept) == 4096 // (len("line 999") + LINE_OVERHEAD)
    assert buffer.dropped == 1000 - len(kept)


def test_a_chunk_larger_than_the_budget_keeps_its_newest_lines() -> None:
    buffer = LogBuffer(4096)
    buffer.feed("stdout", b"old\n", 0.0)
    buffer.feed("stdout", b"".join(b"%d\n" % i for i in range(100_000)), 1.0)
    kept = buffer.tail()
    assert kept[-1].text == "99999"
    assert kept[-1].seq == 100_001
    assert "old" not in [line.text for line in kept]
    assert buffer.dropped + len(kept) == 100_001
    assert buffer.used <= 4096


def test_memory_is_flat_whatever_is_printed() -> None:
    buffer = LogBuffer(4096, max_line=64)
    for chunk in (b"y\n" * 40_000, b"z" * 100_000, b"\n" * 40_000, b"w" * 70 + b"\n"):
        buffer.feed("stderr", chunk, 0.0)
        held = sum(sys.getsizeof(line[3]) for line in buffer._lines)
        assert held < 2 * 4096
        assert all(len(p.data) <= 64 for p in buffer._partial.values())


@pytest.mark.parametrize(
    ("query", "lines"),
    [
        pytest.param({}, ["o0", "e1", "o2", "e3", "o4"], id="all"),
        pytest.param({"n": 2}, ["e3", "o4"], id="newest n, in order"),
        pytest.param({"n": 0}, [], id="none"),
        pytest.param({"n": 99}, ["o0", "e1", "o2", "e3", "o4"], id="more than there are"),
        pytest.param({"stream": "stderr"}, ["e1", "e3"], id="stderr"),
        pytest.param({"stream": "stdout", "n": 2}, ["o2", "o4"], id="n of one stream"),
        pytest.param({"since": 2.0}, ["o2", "e3", "o4"], id="since a time"),
        pytest.param({"since": 2.0, "stream": "stderr"}, ["e3"], id="since and stream"),
        pytest.param({"after": 3}, ["e3", "o4"], id="after a sequence number"),
    ],
)
def test_tail_queries(query: dict[str, object], lines: list[str]) -> None:
    buffer = LogBuffer()
    for i in range(5):
        stream: StreamName = "stdout" if i % 2 == 0 else "stderr"
        buffer.feed(stream, f"{stream[3]}{i}\n".encode(), float(i))
    assert texts(buffer, **query) == lines


def test_a_line_knows_its_time_and_stream() -> None:
    buffer = LogBuffer()
    buffer.feed("stderr", b"boom\n", 1_800_000_000.7)
    assert buffer.tail() == [LogLine(seq=1, at=1_800_000_000.7, stream="stderr", text="boom")]
    assert buffer.tail()[0].time == "2027-01-15T08:00:00Z"


@pytest.mark.parametrize("stream", ["both", "stdout", "stderr"])
def test_an_empty_buffer(stream: StreamChoice) -> None:
    assert LogBuffer().tail(10, stream=stream) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="budget"):
        LogBuffer(100)
    with pytest.raises(ValueError, match="negative"):
        LogBuffer().tail(-1)
