"""A connected `Fleet` of simulated devices as an async context manager.

`connected_fleet` connects the named devices to a broker and always closes them on the way out, so
a test reads `async with connected_fleet(...) as fleet:` instead of a try/finally of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from tests.support.brokers import BrokerProcess
from tests.support.devices import Fleet


@contextlib.asynccontextmanager
async def connected_fleet(
    broker: BrokerProcess,
    secret: bytes,
    names: Iterable[str],
    *,
    heartbeat_s: int = 1,
    desired: bool = False,
) -> AsyncIterator[Fleet]:
    """`names` connected to `broker` (subscribed to their desired documents with `desired`)."""
    fleet = Fleet(broker.host, broker.port, secret, heartbeat_s=heartbeat_s)
    await fleet.connect(names, desired=desired)
    try:
        yield fleet
    finally:
        await fleet.close()
