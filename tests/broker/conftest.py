"""Fixtures of the embedded broker's own tests: an in-process broker and clients that always stop.

`inproc_broker` is a fresh `EmbeddedBroker` per test, in a thread, on a free port (short timeouts
so keepalive and CONNECT-timeout tests stay fast); `make_inproc_broker(...)` builds one with other
settings or an injected `Gatekeeper`. `peer(...)` and `raw()` make clients of `inproc_broker`;
everything is closed at teardown, in reverse order. (The conformance suite's subprocess brokers
are `tests/support/fixtures.py`; the names here do not overlap them.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from devicefabric.broker.auth import Gatekeeper
from devicefabric.broker.embedded import BrokerSettings
from devicefabric.config.settings import HostPort
from tests.support.inproc import BrokerThread, Peer, RawPeer

MakeBroker = Callable[..., BrokerThread]
MakePeer = Callable[..., Peer]
MakeRaw = Callable[[], RawPeer]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def make_inproc_broker(secret: bytes, stack: ExitStack) -> MakeBroker:
    def make(gatekeeper: Gatekeeper | None = None, **overrides: Any) -> BrokerThread:
        options: dict[str, Any] = {
            "secret": secret,
            "mqtt": HostPort("127.0.0.1", 0),
            "connect_timeout": 1.0,
            "revocation_poll": 0.05,
        }
        options.update(overrides)
        return stack.enter_context(BrokerThread(BrokerSettings(**options), gatekeeper))

    return make


@pytest.fixture
def inproc_broker(make_inproc_broker: MakeBroker) -> BrokerThread:
    return make_inproc_broker()


@pytest.fixture
def peer(inproc_broker: BrokerThread, stack: ExitStack) -> MakePeer:
    """`peer(user, connect=True, watch=None, **kwargs)`: a `Peer`, connected and accepted unless
    told not, subscribed to `watch` when given."""

    def make(user: str, *, connect: bool = True, watch: str | None = None, **kwargs: Any) -> Peer:
        client = Peer(inproc_broker, user, **kwargs)
        stack.callback(client.close)
        if connect:
            reason = client.connect()
            assert client.accepted, f"{user} refused: {reason}"
        if watch is not None:
            client.subscribe(watch)
        return client

    return make


@pytest.fixture
def raw(inproc_broker: BrokerThread, stack: ExitStack) -> MakeRaw:
    def make() -> RawPeer:
        return stack.enter_context(RawPeer(inproc_broker))

    return make
