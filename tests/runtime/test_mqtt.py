"""The MQTT transport on real brokers: connect, subscribe and publish with their acknowledgements,
a clean close whose last word is retained, refusals and losses; the same channel driven by a
plain `selectors` loop (no asyncio); and the reconnect loop's back-off."""

from __future__ import annotations

import asyncio
import queue
import selectors
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.config.settings import parse_broker_url
from devicefabric.config.topics import DEFAULT_ROOT, Topics
from devicefabric.runtime.backoff import Backoff
from devicefabric.runtime.mqtt import PERMANENT_REFUSALS, Channel, Endpoint, Will, code_of
from devicefabric.runtime.mqttloop import Connection, ConnectionLostError, reconnecting
from tests.support.brokers import BrokerProcess
from tests.support.packets import ConnackThenClose
from tests.support.ports import free_port
from tests.support.waiting import async_wait_for

T = Topics(DEFAULT_ROOT)
Received = tuple[str, bytes, bool]


def endpoint(url: str, password: str) -> Endpoint:
    """The `bridge` user (it may publish and read `desired`) with a fresh bridge client id."""
    return Endpoint(
        broker=parse_broker_url(url),
        client_id=f"bridge_rt-{uuid.uuid4().hex[:8]}",
        username="bridge",
        password=password,
        keepalive=10,
        connect_timeout=5.0,
    )


def play(story: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await story()

    asyncio.run(bounded())


def test_subscribe_publish_acknowledged_and_a_clean_close_leaves_its_last_word(
    any_broker: BrokerProcess,
) -> None:
    url, password = any_broker.url, any_broker.password("bridge")
    topic = T.desired("dev-a")
    last = Will(T.desired("dev-c"), b"the last word")  # retained, QoS 1

    async def story() -> None:
        got: list[Received] = []
        conn = Connection(endpoint(url, password), Will(T.bridge_status(), b"{}"), session="rt.1")
        conn.on_message = lambda *message: got.append(message)
        assert not (await conn.open()).is_failure
        assert [r.is_failure for r in await conn.subscribe_acked([(topic, 1)])] == [False]
        await conn.publish_acked(topic, b"doc", retain=False)  # returns on the PUBACK
        await async_wait_for(lambda: got, what="our own message back")
        assert got == [(topic, b"doc", False)]
        assert await conn.close(last)  # the last word was acknowledged before disconnecting
        assert conn.lost.done()

        # a new connection reads it back, retained
        seen: list[Received] = []
        again = Connection(endpoint(url, password), None)
        again.on_message = lambda *message: seen.append(message)
        await again.open()
        await again.subscribe_acked([(last.topic, 1)])
        await async_wait_for(lambda: seen, what="the retained last word")
        assert seen == [(last.topic, last.payload, True)]
        assert await again.close()

    play(story)


def test_a_refused_login_is_a_permanent_refusal(any_broker: BrokerProcess) -> None:
    async def story() -> None:
        conn = Connection(endpoint(any_broker.url, "wrong-password"), None)
        reason = await conn.open()
        assert code_of(reason) in PERMANENT_REFUSALS
        assert str(reason) == "Not authorized"
        conn.abandon()
        assert conn.lost.done()  # abandoning resolves `lost`: nobody waits on it forever

    play(story)


def test_nothing_listening_fails_open_and_leaves_nothing_behind() -> None:
    async def story() -> None:
        conn = Connection(endpoint(f"mqtt://127.0.0.1:{free_port()}", "x"), None)
        with pytest.raises(OSError):
            await conn.open()
        assert conn.lost.done()
        assert conn.client.socket() is None or conn.client.socket().fileno() == -1  # type: ignore[union-attr]

    play(story)


def test_a_loss_fails_every_pending_acknowledgement() -> None:
    async def story() -> None:
        server = await asyncio.start_server(ConnackThenClose(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            conn = Connection(endpoint(f"mqtt://127.0.0.1:{port}", "x"), None)
            assert not (await conn.open()).is_failure
            suback = conn.subscribe_acked([(T.desired("dev-a"), 1)])
            with pytest.raises(ConnectionLostError):
                await suback
            await conn.lost
            with pytest.raises(ConnectionLostError):
                await conn.publish_acked(T.desired("dev-a"), b"late")
            assert await conn.close() is True  # nothing to say, nothing to wait for
        finally:
            server.close()

    play(story)


# -- the channel without asyncio -----------------------------------------------------------------
class SelectReactor:
    """A `mqtt.Reactor` on `selectors`: what a loop other than asyncio's has to provide."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.readers: dict[int, Callable[[], None]] = {}
        self.writers: dict[int, Callable[[], None]] = {}
        self.ready: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def _update(self, fd: int) -> None:
        if fd in self.selector.get_map():
            self.selector.unregister(fd)
        events = (selectors.EVENT_READ if fd in self.readers else 0) | (
            selectors.EVENT_WRITE if fd in self.writers else 0
        )
        if events:
            self.selector.register(fd, events)

    def watch_read(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback
        self._update(fd)

    def watch_write(self, fd: int, callback: Callable[[], None]) -> None:
        self.writers[fd] = callback
        self._update(fd)

    def unwatch_write(self, fd: int) -> None:
        self.writers.pop(fd, None)
        self._update(fd)

    def unwatch(self, fd: int) -> None:
        self.readers.pop(fd, None)
        self.writers.pop(fd, None)
        self._update(fd)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.ready.put(callback)

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        self.ready.put(callback)

    def run_until(self, done: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the channel did not get there in time"
            while not self.ready.empty():
                self.ready.get()()
            for key, events in self.selector.select(0.02):
                fd = int(key.fd)
                if events & selectors.EVENT_READ and fd in self.readers:
                    self.readers[fd]()
                if events & selectors.EVENT_WRITE and fd in self.writers:
                    self.writers[fd]()


class Recorder(Channel):
    def __init__(self, point: Endpoint, reactor: SelectReactor, *, buffered: bool) -> None:
        super().__init__(point, None, reactor, buffered=buffered)
        self.events: list[tuple[str, object]] = []
        self.acknowledged: list[int] = []  # SUBACKed subscription ids
        self.messages: list[Received] = []
        self.on_message = lambda *message: self.messages.append(message)

    def handshaken(self, error: BaseException | None) -> None:
        self.events.append(("handshaken", error))

    def connected(self, reason: ReasonCode) -> None:
        self.events.append(("connack", reason.is_failure))

    def subscribed(self, mid: int, reasons: list[ReasonCode]) -> None:
        self.acknowledged.append(mid)
        self.events.append(("suback", [r.is_failure for r in reasons]))

    def closed(self, reason: str) -> None:
        self.events.append(("closed", reason))

    def saw(self, kind: str) -> bool:
        return any(event == kind for event, _ in self.events)


@pytest.mark.parametrize("buffered", [False, True], ids=["paho-reads", "buffered-reads"])
def test_a_channel_runs_on_a_plain_selectors_loop(mosquitto: BrokerProcess, buffered: bool) -> None:
    reactor = SelectReactor()
    channel = Recorder(
        endpoint(mosquitto.url, mosquitto.password("bridge")), reactor, buffered=buffered
    )
    topic = T.desired("dev-b")
    channel.start()
    reactor.run_until(lambda: channel.saw("connack"))
    mid = channel.subscribe([(topic, 0)])
    assert mid is not None
    reactor.run_until(lambda: channel.saw("suback"))
    assert channel.acknowledged == [mid]
    for n in range(50):  # QoS 0: the buffered client's fast path
        assert channel.publish(topic, b"%d" % n, qos=0, retain=False) is not None
    reactor.run_until(lambda: len(channel.messages) == 50)
    assert channel.messages == [(topic, b"%d" % n, False) for n in range(50)]
    channel.disconnect()
    reactor.run_until(lambda: channel.saw("closed"))
    assert channel.events[:3] == [("handshaken", None), ("connack", False), ("suback", [False])]
    assert not reactor.readers  # the socket was given back to nobody
    channel.abandon()


# -- reconnecting --------------------------------------------------------------------------------
def test_reconnecting_backs_off_starts_over_after_a_held_connection_and_stops() -> None:
    # (established, seconds it held) per attempt; a connection held >= 3 s resets the back-off
    script = [(False, 0.0), (False, 0.0), (True, 5.0), (False, 0.0), (True, 1.0), (False, 0.0)]
    now = [0.0]
    retries: list[tuple[bool, float]] = []

    async def attempt() -> bool:
        established, held = script.pop(0)
        now[0] += held
        return established

    async def story() -> None:
        await reconnecting(
            attempt,
            Backoff(base=0.001, cap=0.008, rand=lambda: 1.0),
            reset_after=3.0,
            retry=lambda established, delay: retries.append((established, delay)),
            stop=lambda: not script,
            clock=lambda: now[0],
        )

    play(story)
    assert [established for established, _ in retries] == [False, False, True, False, True]
    assert [delay for _, delay in retries] == pytest.approx([0.001, 0.002, 0.001, 0.002, 0.004])


def test_an_attempts_error_ends_reconnecting() -> None:
    class RefusedError(Exception):
        pass

    async def attempt() -> bool:
        raise RefusedError

    async def story() -> None:
        with pytest.raises(RefusedError):
            await reconnecting(attempt, Backoff(base=0.001, cap=0.001))

    play(story)
