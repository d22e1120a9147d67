"""The logs request/reply contract: the pydantic models, the agent's codec, and reply chunking.

`logcodec.decode_log_request` (the agent's, pydantic-free) must accept exactly what
`wire.decode_log_request` accepts, with the same defaults and canonical bytes, and refuse exactly
what it refuses, with the same reason. `logcodec.reply_chunks` must keep every chunk under its
byte bound, keep every line in order, and cut (with a marker) rather than drop a line too long.
"""

from __future__ import annotations

import json
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicefabric.config import logcodec, wire
from devicefabric.config.errors import PayloadError
from devicefabric.config.logcodec import (
    MAX_LOG_ERROR,
    MAX_LOG_LINE,
    MIN_CHUNK_BYTES,
    LogLine,
    cut_marker,
    reply_chunks,
)
from tests.faults import strategies as fs
from tests.faults.budget import FUZZ
from tests.support.codecs import reencoded


# -- requests: the agent's decoder agrees with the pydantic model ---------------------------------
def _pydantic(payload: bytes) -> bytes | str:
    return reencoded(wire.decode_log_request, wire.encode, payload)


def _lean(payload: bytes) -> bytes | str:
    return reencoded(logcodec.decode_log_request, logcodec.encode_log_request, payload)


def _request(**fields: Any) -> bytes:
    doc = {"id": "req-1", "namespace": "default", "name": "web", **fields}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


REQUESTS: Final = [
    (_request(), "ok"),
    (_request(tail=1, sinceSeconds=0, stream="stdout"), "ok"),
    (_request(tail=10_000, sinceSeconds=2**63 - 1, stream="stderr"), "ok"),
    (_request(name="a.b-c", sinceSeconds=None), "ok"),
    (_request(tail=0), "schema"),
    (_request(tail=10_001), "schema"),
    (_request(tail=100.0), "schema"),
    (_request(tail=True), "schema"),
    (_request(tail="100"), "schema"),
    (_request(sinceSeconds=-1), "schema"),
    (_request(sinceSeconds=2**63), "schema"),
    (_request(since_seconds=5), "schema"),  # the wire name only
    (_request(stream="all"), "schema"),
    (_request(stream=None), "schema"),
    (_request(id=""), "schema"),
    (_request(id="a" * 65), "schema"),
    (_request(id="a b"), "schema"),
    (_request(id=...), "schema"),
    (_request(namespace="Default"), "schema"),
    (_request(namespace="a" * 64), "schema"),
    (_request(name="Web"), "schema"),
    (_request(name=...), "schema"),
    (_request(extra=1), "schema"),
    (b"[]", "schema"),
    (b"null", "schema"),
    (b"{", "invalid_json"),
    (b"\xff", "invalid_json"),
    (b"", "invalid_json"),
    (b'{"id": "\\ud800", "namespace": "a", "name": "b"}', "invalid_json"),
    (b" " * (64 * 1024 + 1), "oversized"),
]


@pytest.mark.parametrize(("payload", "expected"), REQUESTS)
def test_edge_requests_decode_alike(payload: bytes, expected: str) -> None:
    ours, theirs = _lean(payload), _pydantic(payload)
    assert ours == theirs, payload[:200]
    assert (ours if isinstance(ours, str) else "ok") == expected


def test_defaults_are_filled_in() -> None:
    request = logcodec.decode_log_request(_request())
    assert (request.tail, request.since_seconds, request.stream) == (100, None, "both")
    assert request.key == "default/web"
    assert wire.decode_log_request(_request()).key == "default/web"


def test_the_limit_is_the_callers() -> None:
    with pytest.raises(PayloadError) as lean_error:
        logcodec.decode_log_request(_request(), limit=10)
    with pytest.raises(PayloadError) as wire_error:
        wire.decode_log_request(_request(), limit=10)
    assert lean_error.value.reason == wire_error.value.reason == "oversized"


def requests() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"id": st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z"), "namespace": st.just("ns")},
        optional={
            "name": st.sampled_from(["a", "web.v2", "x-1"]),
            "tail": st.integers(-1, 10_002),
            "sinceSeconds": st.none() | st.integers(-1, 2**64),
            "stream": st.sampled_from(["stdout", "stderr", "both", "Both", ""]),
        },
    )


@FUZZ
@given(st.one_of(requests().map(fs.json_bytes), fs.mutated_payloads(requests())))
def test_requests_and_their_mutations_decode_alike(payload: bytes) -> None:
    assert _lean(payload) == _pydantic(payload)


@FUZZ
@given(fs.json_values())
def test_any_json_decodes_alike(value: Any) -> None:
    payload = fs.json_bytes(value)
    assert _lean(payload) == _pydantic(payload)


# -- replies: chunks under the bound, every line kept or cut with a marker ------------------------
T0: Final = "2024-05-01T12:00:00.123456Z"


def _lines(*texts: str, stream: str = "o") -> list[LogLine]:
    return [LogLine(T0, stream, text) for text in texts]  # type: ignore[arg-type]


def _decoded(chunks: list[bytes], limit: int) -> list[wire.LogReply]:
    """Every chunk decoded by the bridge's model under `limit`, checked as one reply."""
    replies = [wire.decode_log_reply(chunk, limit) for chunk in chunks]
    assert all(len(chunk) <= limit for chunk in chunks)
    assert [r.seq for r in replies] == list(range(len(replies)))
    assert [r.end for r in replies] == [False] * (len(replies) - 1) + [True]
    assert {r.id for r in replies} == {"req-1"}
    assert all(r.error is None for r in replies[:-1])
    return replies


def _texts(replies: list[wire.LogReply]) -> list[str]:
    return [line.l for reply in replies for line in reply.lines]


CHUNKING: Final = [
    # (lines, limit, expected chunk count)
    pytest.param([], 512, 1, id="no-lines-one-empty-chunk"),
    pytest.param(["a", "b", "c"], 512, 1, id="few-lines-one-chunk"),
    pytest.param(["x" * 100] * 10, 512, 4, id="lines-split-across-chunks"),
    pytest.param(["x" * 100] * 1000, 64 * 1024, 3, id="payload-limit"),  # 148 B a line
    pytest.param(["\x00" * 60] * 4, 512, 4, id="escaped-control-characters"),
    pytest.param(["é" * 150] * 2, 512, 2, id="multi-byte-characters-counted-in-bytes"),
]


@pytest.mark.parametrize(("texts", "limit", "count"), CHUNKING)
def test_lines_are_packed_in_order_under_the_bound(
    texts: list[str], limit: int, count: int
) -> None:
    chunks = reply_chunks("req-1", _lines(*texts), limit=limit)
    replies = _decoded(chunks, limit)
    assert len(replies) == count
    assert _texts(replies) == texts
    assert all(line.t == T0 and line.s == "o" for r in replies for line in r.lines)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("y" * 2000, id="ascii"),
        pytest.param("\x01" * 2000, id="escapes"),
        pytest.param("😀" * 2000, id="four-byte"),
    ],
)
def test_a_line_longer_than_a_chunk_is_cut_with_a_marker_not_dropped(text: str) -> None:
    limit = 512
    chunks = reply_chunks("req-1", _lines("before", text, "after"), limit=limit)
    replies = _decoded(chunks, limit)
    before, cut, after = _texts(replies)
    assert (before, after) == ("before", "after")
    prefix = cut.rpartition(" [... ")[0]
    assert text.startswith(prefix)
    assert 0 < len(prefix) < len(text)
    assert cut == prefix + cut_marker(len(text) - len(prefix))


def test_a_line_longer_than_the_line_bound_is_cut_even_when_a_chunk_could_hold_it() -> None:
    text = "z" * (MAX_LOG_LINE + 500)
    (reply,) = _decoded(reply_chunks("req-1", _lines(text)), 64 * 1024)
    (line,) = reply.lines
    assert len(line.l) == MAX_LOG_LINE
    missing = len(text) - line.l.index(" [...")
    assert line.l.endswith(cut_marker(missing))


def test_a_line_exactly_at_the_bound_is_kept_whole() -> None:
    text = "w" * MAX_LOG_LINE
    (reply,) = _decoded(reply_chunks("req-1", _lines(text)), 64 * 1024)
    assert _texts([reply]) == [text]


def test_an_error_rides_on_the_last_chunk() -> None:
    replies = _decoded(reply_chunks("req-1", [], error="no such process"), 512)
    assert [(r.lines, r.error) for r in replies] == [([], "no such process")]


def test_an_error_that_does_not_fit_gets_a_last_chunk_of_its_own_cut_to_fit() -> None:
    limit = 512
    error = "E" * 5000
    replies = _decoded(reply_chunks("req-1", _lines("x" * 380), error=error, limit=limit), limit)
    assert len(replies) == 2
    assert _texts(replies) == ["x" * 380]
    assert replies[-1].lines == []
    assert replies[-1].error is not None
    assert len(replies[-1].error) <= MAX_LOG_ERROR
    assert replies[-1].error.startswith("EEE")
    assert replies[-1].error.endswith("characters cut]")


def test_a_bound_too_small_for_any_line_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        reply_chunks("req-1", _lines("a"), limit=MIN_CHUNK_BYTES - 1)


TEXT: Final = st.characters(exclude_categories=["Cs"])  # what a decoded output line can hold


@FUZZ
@given(
    texts=st.lists(st.text(TEXT, max_size=700), max_size=30),
    limit=st.integers(MIN_CHUNK_BYTES, 4096),
    error=st.none() | st.text(TEXT, max_size=1500),
)
def test_any_lines_give_decodable_chunks_under_the_bound(
    texts: list[str], limit: int, error: str | None
) -> None:
    lines = [LogLine(T0, "e" if i % 2 else "o", t) for i, t in enumerate(texts)]
    replies = _decoded(reply_chunks("req-1", lines, error=error, limit=limit), limit)
    got = _texts(replies)
    assert len(got) == len(texts)
    for sent, received in zip(texts, got, strict=True):
        if received != sent:  # cut: a prefix of the line, then the marker
            prefix, _, _ = received.rpartition(" [... ")
            assert sent.startswith(prefix)
            assert received.endswith(cut_marker(len(sent) - len(prefix)))
    if error is not None:
        assert replies[-1].error is not None
        assert replies[-1].error == error or replies[-1].error.endswith("characters cut]")
