"""The MQTT transport on asyncio: one connection's futures, its clean close, and reconnecting.

`Connection` is a `mqtt.Channel` on the running event loop (`LoopReactor`: `add_reader`,
`add_writer`, `call_soon_threadsafe`) with what a coroutine awaits:
- `open()` connects and returns the CONNACK reason (a failure code is a refusal, the caller
  decides); OSError, TimeoutError (`connect_timeout` for the CONNACK) or `ConnectionLostError`
  when there is none. Cancelled or failed, it abandons the connection.
- `lost` resolves with the reason once the connection is gone, whoever closed it (abandoning it
  included).
- `subscribe(filters)` queues a SUBSCRIBE and returns the future of its SUBACK reasons;
  `publish_acked` waits for a QoS 1 message's PUBACK. A loss fails every pending future with
  `ConnectionLostError` (retrieved: a waiter that never awaits it is fine).
- `close(last)` publishes a retained last word (QoS 1) and waits for its PUBACK, then
  disconnects (the broker discards the will) and waits until the socket is closed, each wait
  bounded; it never raises.

`reconnecting(attempt, backoff)` is the loop around connections both programs run: one attempt
(connect, hold until lost), then the back-off's next delay (`runtime.backoff`), reset once a
connection was established and held `reset_after` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.runtime.backoff import Backoff
from devicefabric.runtime.mqtt import Channel, Endpoint, Will


class ConnectionLostError(Exception):
    """The connection closed before what was awaited (a CONNACK, SUBACK or PUBACK) arrived."""


class LoopReactor:
    """The asyncio event loop as a `mqtt.Reactor`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def watch_read(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fd, callback)

    def watch_write(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_writer(fd, callback)

    def unwatch_write(self, fd: int) -> None:
        self.loop.remove_writer(fd)

    def unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.loop.call_soon(callback)

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while a connect was in flight
            self.loop.call_soon_threadsafe(callback)


class Connection(Channel):
    """One MQTT connection on the running loop; `session` is the owner's label for it."""

    def __init__(
        self, endpoint: Endpoint, will: Will | None, *, session: str = "", buffered: bool = False
    ) -> None:
        self.loop = asyncio.get_running_loop()
        super().__init__(endpoint, will, LoopReactor(self.loop), buffered=buffered)
        self.session = session
        self.connack: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.lost: asyncio.Future[str] = self.loop.create_future()
        self._handshake: asyncio.Future[None] = self.loop.create_future()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}

    async def open(self) -> ReasonCode:
        """Connect and return the CONNACK reason (see the module doc)."""
        try:
            self.start()
            await self._handshake
            async with asyncio.timeout(self.endpoint.connect_timeout):
                return await self.connack
        except BaseException:
            self.abandon()
            raise

    def subscribe_acked(self, filters: list[tuple[str, int]]) -> asyncio.Future[list[ReasonCode]]:
        """Subscribe; the future of the SUBACK's reasons (failed at once when the link is down)."""
        future: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        mid = self.subscribe(filters)
        if mid is None or self.lost.done():
            _fail(future, "not connected")
        else:
            self._subacks[mid] = future
        return future

    async def publish_acked(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish at QoS 1 and wait for the PUBACK (callers bound the wait)."""
        mid = self.publish(topic, payload, qos=1, retain=retain)
        if mid is None or self.lost.done():
            raise ConnectionLostError("not connected")
        ack = self._acks[mid] = self.loop.create_future()
        await ack

    async def close(self, last: Will | None = None, bound: float = 2.0) -> bool:
        """Publish `last` (retained, QoS 1; None: nothing) and wait for its PUBACK, disconnect and
        wait until the connection is gone, each wait bounded by `bound` seconds; then abandon it.
        False when `last` was not acknowledged. Never raises (but cancellation)."""
        acked = last is None
        try:
            if not self.lost.done():
                if last is not None:
                    with contextlib.suppress(TimeoutError, ConnectionLostError):
                        async with asyncio.timeout(bound):
                            await self.publish_acked(last.topic, last.payload)
                            acked = True
                self.disconnect()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(bound):
                        await asyncio.shield(self.lost)
        finally:
            self.abandon()
        return acked

    def abandon(self) -> None:
        """Give the connection up (see `Channel.abandon`); `lost` resolves if it had not."""
        super().abandon()
        self.closed("abandoned")

    # -- hooks ------------------------------------------------------------------------------------
    def handshaken(self, error: BaseException | None) -> None:
        if not self._handshake.done():
            if error is None:
                self._handshake.set_result(None)
            else:
                self._handshake.set_exception(error)

    def connected(self, reason: ReasonCode) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)

    def closed(self, reason: str) -> None:
        _fail(self.connack, reason)
        if not self.lost.done():
            self.lost.set_result(reason)
        waiters: list[asyncio.Future[Any]] = [*self._acks.values(), *self._subacks.values()]
        self._acks.clear()
        self._subacks.clear()
        for waiter in waiters:
            _fail(waiter, reason)

    def subscribed(self, mid: int, reasons: list[ReasonCode]) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    def published(self, mid: int) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(None)


def _fail(future: asyncio.Future[Any], reason: str) -> None:
    if not future.done():
        future.set_exception(ConnectionLostError(reason))
        future.exception()  # retrieved: a waiter that never awaits it is fine


async def reconnecting(
    attempt: Callable[[], Awaitable[bool]],
    backoff: Backoff,
    *,
    reset_after: float = 0.0,
    retry: Callable[[bool, float], None] | None = None,
    stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run `attempt()` (one connection: True when it was established) again and again.

    Between attempts: `retry(established, delay)` (to log, or move to another broker), then the
    back-off's next delay, which starts over after a connection established and held at least
    `reset_after` seconds. Returns when `stop()` is true after an attempt; an exception of
    `attempt` (a refused login) ends it too.
    """
    while True:
        started = clock()
        established = await attempt()
        if stop is not None and stop():
            return
        if established and clock() - started >= reset_after:
            backoff.reset()
        delay = backoff.next_delay()
        if retry is not None:
            retry(established, delay)
        await asyncio.sleep(delay)
