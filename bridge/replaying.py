"""Was the retained replay complete? What one connection's replay delivered, and what to re-read.

After the bridge subscribes, the broker replays the retained `status` and `desired` documents of
every device. A broker may deliver only part of that replay (mosquitto drops what exceeds a
client's `max_queued_messages`; the sync marker may be among the losses) or may have lost its
retained store (restarted without persistence). Taking a device whose document did not arrive for
a device without one is wrong both ways: the bridge would republish every `desired` document
(thousands of needless publishes, each delivered to its device) and would take a broker that lost
everything for one that holds it.

So the link checks instead of guessing. `ReplayLedger` records, per connection, which
`(device, kind)` documents arrived retained. Once the wildcard replay is over, `unseen` lists the
documents expected but not seen: `desired` of every device the bridge mirrors or has mirrored,
`status` of every device that has resources. The link re-reads exactly those, in batches of
`batch` exact-topic subscriptions (a new subscription makes the broker send that topic's retained
message: MQTT 3.1.1, 3.3.1.3), each batch closed by the sync marker, then unsubscribed, so a
batch never exceeds a per-client subscription cap. They are QoS 0 subscriptions: mosquitto's
`max_queued_messages` bounds only QoS 1/2 deliveries (measured with a bound of 10: a wildcard
replay of 300 retained documents delivered 30; exact re-reads in batches of 100 delivered 90 at
QoS 1 and all 300 at QoS 0). Whatever is still unseen
after that is confirmed missing: `desired` documents are republished (and only those); a device
without a retained `status` is one the broker does not know.

Pure: no IO; the link (`mqtt`) does the subscribing, the service feeds `saw` from ingest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from devicefabric.config.topics import DeviceTopic, Topics

REPLAYED: Final = (DeviceTopic.STATUS, DeviceTopic.DESIRED)
BATCH: Final = 500  # exact topics per re-read (the embedded broker allows 1,000 per client)


@dataclass(frozen=True, slots=True)
class Expected:
    """Which devices should have retained documents: `desired` for `mirrored`, `status` for
    `with_resources`."""

    mirrored: frozenset[str]
    with_resources: frozenset[str]


class ReplayLedger:
    """The retained documents one connection's replay delivered (see the module doc)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, DeviceTopic]] = set()
        self.reread = 0  # documents re-read by exact subscription on the last connection
        self.missing = 0  # ...and still not there after it (confirmed missing)

    def start(self) -> None:
        """A new connection: nothing seen yet."""
        self._seen.clear()
        self.reread = self.missing = 0

    def saw(self, device: str, kind: DeviceTopic) -> None:
        if kind in REPLAYED:
            self._seen.add((device, kind))

    def seen(self, device: str, kind: DeviceTopic) -> bool:
        return (device, kind) in self._seen

    def unseen(self, expected: Expected) -> list[tuple[str, DeviceTopic]]:
        """Expected documents not delivered yet, in a stable order (device, then kind)."""
        wanted = [(d, DeviceTopic.DESIRED) for d in expected.mirrored]
        wanted += [(d, DeviceTopic.STATUS) for d in expected.with_resources]
        return sorted(pair for pair in wanted if pair not in self._seen)

    def confirm(self, reread: Sequence[tuple[str, DeviceTopic]]) -> list[str]:
        """After re-reading `reread`: the devices whose `desired` is confirmed missing."""
        still = [pair for pair in reread if pair not in self._seen]
        self.reread, self.missing = len(reread), len(still)
        return [device for device, kind in still if kind is DeviceTopic.DESIRED]


def reread_topics(
    topics: Topics, pairs: Iterable[tuple[str, DeviceTopic]], batch: int = BATCH
) -> Iterator[list[str]]:
    """The exact topics to subscribe to, `batch` at a time."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch}")
    chunk: list[str] = []
    for device, kind in pairs:
        chunk.append(topics.device(device, kind))
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
