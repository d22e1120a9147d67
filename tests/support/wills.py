"""A device with a will, watched by the observer: how each "when is the will sent" story starts.

`watched_with_will` connects the observer (watching everything) and a raw `alpha` whose will is
`lost` on its status topic; `watched_peer_with_will` does the same with a paho `Peer` on a broker
the test made itself; `numbered_burst` is the bytes of many QoS 0 PUBLISH packets whose
payloads count up from 0, so a test can check that all arrived, in order, before the will or none.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, closing

from devicefabric.config.topics import Topics
from tests.support.inproc import BrokerThread, Peer, RawPeer
from tests.support.packets import publish_packet

T = Topics()


def watched_with_will(
    peer: Callable[..., Peer], raw: Callable[[], RawPeer], device: str = "alpha"
) -> tuple[Peer, RawPeer]:
    """The observer watching everything, and a raw `device` connected with the will `lost`."""
    observer = peer("observer", watch=T.everything())
    client = raw()
    assert client.connect(device, will=(T.status(device), b"lost")) == 0
    return observer, client


def watched_peer_with_will(
    broker: BrokerThread, stack: ExitStack, will: bytes, device: str = "alpha"
) -> tuple[Peer, Peer]:
    """On `broker`: the observer watching everything, and `device` accepted with the will `will`
    on its status topic; both closed with `stack`."""
    observer = stack.enter_context(closing(Peer(broker, "observer")))
    observer.connect()
    observer.subscribe(T.everything())
    client = stack.enter_context(closing(Peer(broker, device)))
    client.will(T.status(device), will).connect()
    assert client.accepted
    return observer, client


def numbered_burst(topic: str, count: int) -> bytes:
    """`count` QoS 0 PUBLISH packets on `topic` with payloads b"0", b"1", ... back to back."""
    return b"".join(publish_packet(topic, str(i).encode()) for i in range(count))
