"""In-process components for their own tests: a broker or bridge in a thread, clients, raw sockets.

- `LoopThread` enters an async component (a broker, a bridge) on its own event loop in a
  background thread for a block; `BrokerThread` is one for an `EmbeddedBroker`, bound to port 0
  (the OS picks a free port, so there is no race with other tests).
- `Peer` is the kit's MQTT test client (`tests.support.mqtt.Client`: what it receives lands in
  an `Inbox` with deadline-based waits; it never reconnects) made before it connects, so a test
  can set a will first and read the CONNACK.
- `RawPeer` speaks MQTT with bytes built by `tests.support.packets`, for what paho refuses to do:
  go silent mid-keepalive, stall mid-packet, send malformed packets.

To show that something was *not* delivered without sleeping, tests publish a marker after the
forbidden act and wait for it (`Inbox.wait_for`): the broker delivers one connection's messages
in order, so anything routed before the marker would have arrived first.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Generic, Self, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.broker.auth import Gatekeeper
from devicefabric.broker.embedded import BrokerSettings, EmbeddedBroker
from devicefabric.config.credentials import password_for
from tests.support.inbox import TIMEOUT
from tests.support.mqtt import Client, password_of
from tests.support.packets import connect_packet

T = TypeVar("T")
R = TypeVar("R")
HOST: Final = "127.0.0.1"


class LoopThread(Generic[T]):
    """An async context manager (`make()`) entered on its own event loop in a daemon thread.

    A context manager itself: `__enter__` returns once it is entered (and `ready(value)` awaited),
    `__exit__` leaves it on its loop and joins the thread; a failure on either side is raised in
    the test's thread. `value` is what it entered; `call(fn)` runs `fn(value)` on its loop.
    """

    def __init__(
        self,
        make: Callable[[], AbstractAsyncContextManager[T]],
        *,
        ready: Callable[[T], Awaitable[object]] | None = None,
        name: str = "loop-thread",
        timeout: float = 2 * TIMEOUT,
    ) -> None:
        self._make, self._wait_ready, self._timeout = make, ready, timeout
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.value: T | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise AssertionError(f"{self._thread.name} did not start in {self._timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self._thread.name} did not stop")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with self._make() as value:
                self.value = value
                if self._wait_ready is not None:
                    await self._wait_ready(value)
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(serve())
        except BaseException as exc:  # raised in the test's thread
            self._error = exc
        finally:
            self._ready.set()

    def call(self, fn: Callable[[T], R]) -> R:
        """Run `fn(value)` on the loop and return its result."""
        assert self._loop is not None
        assert self.value is not None
        value = self.value
        result: Future[R] = Future()

        def run() -> None:
            try:
                result.set_result(fn(value))
            except Exception as exc:
                result.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return result.result(TIMEOUT)


class BrokerThread(LoopThread[EmbeddedBroker]):
    """An `EmbeddedBroker` on its own loop in a daemon thread; a context manager."""

    def __init__(self, settings: BrokerSettings, gatekeeper: Gatekeeper | None = None) -> None:
        super().__init__(lambda: EmbeddedBroker(settings, gatekeeper), name="embedded-broker")
        self.settings = settings
        self.secret = settings.secret

    @property
    def broker(self) -> EmbeddedBroker | None:
        return self.value

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def password(self, user: str) -> str:
        return password_for(self.secret, user)


class Peer(Client):
    """A `tests.support.mqtt.Client` of the in-process broker, made before it connects.

    `will(...)` may be set first; `connect()` returns the CONNACK reason code (None when the
    broker closed without one); `subscribe` returns the granted QoS (0x80 when refused) and
    `publish` raises unless the broker acknowledged.
    """

    def __init__(
        self,
        broker: BrokerThread,
        user: str,
        *,
        client_id: str | None = None,
        password: str | None = None,
        clean: bool = True,
        keepalive: int = 60,
        tls_ca: str | None = None,
    ) -> None:
        cid = client_id if client_id is not None else _default_id(user)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean)
        client.username_pw_set(
            user, password if password is not None else password_of(broker, user)
        )
        if tls_ca is not None:
            client.tls_set(ca_certs=tls_ca)
        super().__init__(client, user, cid)
        self._keepalive = keepalive
        self._broker = broker

    def will(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Self:
        self.paho.will_set(topic, payload, qos=qos, retain=retain)
        return self

    def connect(self, host: str = HOST) -> ReasonCode | None:
        """Connect and wait for the CONNACK; None when the broker closed without one."""
        self.paho.connect(host, self._broker.port, keepalive=self._keepalive)
        self.start_loop()
        if not self.connack.wait(TIMEOUT):
            raise AssertionError(f"{self.user}: no CONNACK within {TIMEOUT}s")
        return self.connack_code

    @property
    def reason(self) -> ReasonCode | None:
        return self.connack_code

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(  # type: ignore[override]  # the granted QoS, as an int
        self, topic_filter: str, qos: int | None = 1, timeout: float = TIMEOUT
    ) -> int:
        """Subscribe; the granted QoS, or 0x80 when refused."""
        return int(super().subscribe(topic_filter, qos, timeout).value)

    def publish(self, *args: Any, **kwargs: Any) -> bool:
        """`Client.publish`, failing unless the broker acknowledged it."""
        if not super().publish(*args, **kwargs):
            raise AssertionError(f"{self.user}: publish {args[:1]} not completed")
        return True


def _default_id(user: str) -> str:
    """A device uses its name; a role user an id that can never be a device name."""
    return f"{user}_test" if user in ("bridge", "observer") else user


class RawPeer:
    """A TCP socket speaking hand-built MQTT."""

    def __init__(self, broker: BrokerThread) -> None:
        self.sock = socket.create_connection((HOST, broker.port), timeout=TIMEOUT)
        self.broker = broker

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, user: str, client_id: str | None = None, **kwargs: Any) -> int:
        """Send a CONNECT as `user` (derived password) and return the CONNACK return code."""
        cid = client_id if client_id is not None else _default_id(user)
        self.send(connect_packet(cid, user, password_of(self.broker, user), **kwargs))
        connack = self.recv_exactly(4)
        assert connack[0] == 0x20, connack
        return connack[3]

    def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def closed_within(self, timeout: float) -> float | None:
        """Seconds until the broker closed the connection (EOF or reset), None if it did not."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                if time.monotonic() - start > timeout:
                    return None
        except TimeoutError:
            return None
        except OSError:
            pass
        return time.monotonic() - start
