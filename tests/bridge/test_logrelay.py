"""Tier 1/2: the bridge's logs relay (`bridge.logrelay`): routing, bounds and errors, on a loop
with the MQTT side replaced by a list of what was published (the broker's part, ACLs included, is
in the conformance suite; the whole path in `tests/cli/test_logs.py`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from devicefabric.bridge.logrelay import LogRelay, LogsError, after
from devicefabric.config.logcodec import LogLine as WireLine
from devicefabric.config.logcodec import reply_chunks
from devicefabric.config.topics import Topics
from devicefabric.config.wire import LogLine

T = Topics()


class Wire:
    """What the relay published; `answer` plays the device."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: bytes) -> bool:
        self.sent.append((topic, json.loads(payload)))
        return True


def lines(*texts: str, t: str = "2026-12-05T10:00:00Z") -> list[WireLine]:
    return [WireLine(t, "o", text) for text in texts]


async def ask(relay: LogRelay, device: str = "d1", **kw: Any) -> list[LogLine]:
    return await relay.fetch(device, "default", "p", tail=kw.pop("tail", 10), **kw)


async def asking(timeout: float) -> tuple[Wire, LogRelay, asyncio.Task[list[LogLine]]]:
    """A relay on a fresh wire with one request for d1 sent (its task still waiting)."""
    wire = Wire()
    relay = LogRelay(T, wire.publish, timeout=timeout)
    task = asyncio.create_task(ask(relay))
    await asyncio.sleep(0)  # one turn of the loop: the request goes out
    return wire, relay, task


def test_a_request_collects_its_chunks_in_order_from_its_device_only() -> None:
    async def story() -> None:
        wire, relay, task = await asking(timeout=2)
        ((topic, request),) = wire.sent
        assert topic == T.logs_request("d1")
        assert request == {"id": request["id"], "namespace": "default", "name": "p", "tail": 10,
                           "stream": "both"}  # fmt: skip
        chunks = reply_chunks(request["id"], lines(*(f"l{i}" for i in range(300))), limit=2048)
        assert len(chunks) > 2
        relay.on_reply("d2", chunks[0])  # another device cannot answer for d1
        for chunk in reversed(chunks):  # out of order: put back in seq order
            relay.on_reply("d1", chunk)
        got = await task
        assert [line.l for line in got] == [f"l{i}" for i in range(300)]
        assert relay.dropped == 1
        assert len(relay) == 0
        relay.on_reply("d1", chunks[0])  # late: nobody waits any more
        assert relay.dropped == 2

    asyncio.run(story())


@pytest.mark.parametrize(
    ("payload", "why"),
    [(b"{", "invalid JSON"), (b'{"id":"x"}', "schema"), (b"x" * 70_000, "oversized")],
)
def test_malformed_replies_are_dropped_and_counted(payload: bytes, why: str) -> None:
    relay = LogRelay(T, Wire().publish)
    relay.on_reply("d1", payload)
    assert relay.dropped == 1, why


def test_no_answer_is_a_504_not_a_hang_and_an_error_is_a_404() -> None:
    async def story() -> None:
        wire = Wire()
        relay = LogRelay(T, wire.publish, timeout=0.2)
        with pytest.raises(LogsError) as silent:
            await ask(relay)
        assert (silent.value.status, str(silent.value)) == (
            504,
            "device d1 did not answer within 0s",
        )
        relay.timeout = 2
        task = asyncio.create_task(ask(relay))
        await asyncio.sleep(0)
        request_id = wire.sent[-1][1]["id"]
        relay.on_reply("d1", reply_chunks(request_id, [], error="no process default/p")[0])
        with pytest.raises(LogsError) as missing:
            await task
        assert missing.value.status == 404
        assert "no process default/p" in str(missing.value)

    asyncio.run(story())


def test_requests_per_device_and_in_flight_are_bounded() -> None:
    async def story() -> None:
        relay = LogRelay(T, Wire().publish, timeout=5, rate=2.0, burst=3, max_pending=4)
        waiting = [asyncio.create_task(ask(relay)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(LogsError) as rate:
            await ask(relay)  # a fourth for d1 within the window
        assert rate.value.status == 429
        waiting.append(asyncio.create_task(ask(relay, "d2")))
        await asyncio.sleep(0)
        with pytest.raises(LogsError) as full:
            await ask(relay, "d3")  # four waiting: the cap
        assert full.value.status == 503
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert len(relay) == 0

    asyncio.run(story())


def test_a_device_replying_forever_cannot_grow_the_bridge() -> None:
    async def story() -> None:
        wire, relay, task = await asking(timeout=0.3)
        request_id = wire.sent[-1][1]["id"]
        chunk = json.dumps({"id": request_id, "seq": 0, "lines": [], "end": False}).encode()
        for _ in range(10_000):  # never `end`
            relay.on_reply("d1", chunk)
        assert relay.dropped >= 10_000 - 256
        with pytest.raises(LogsError):
            await task

    asyncio.run(story())


L = [LogLine(t=f"2026-12-05T10:00:0{i // 2}Z", s="o", l=f"x{i}") for i in range(6)]


@pytest.mark.parametrize(
    ("batch", "anchor", "fresh"),
    [
        (L[:4], None, L[:4]),
        (L[:4], L[1], L[2:4]),  # after the anchor
        (L[2:6], L[3], L[4:6]),
        (L[4:6], L[1], L[4:6]),  # the anchor left the window: what is newer than its second
        (L[:4], L[3], []),
    ],
)
def test_follow_sends_each_line_once(
    batch: list[LogLine], anchor: LogLine | None, fresh: list[LogLine]
) -> None:
    assert after(batch, anchor) == fresh
