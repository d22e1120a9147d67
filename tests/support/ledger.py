"""Counting what a local control plane wrote, and a marker device that shows the bridge caught up.

Counting writes: the local control plane appends one `<revision> <namespace>/<name>` line to its
journal (`changes.log`) for every status patch (and every apply), and one line to `events.jsonl`
per Event. `Ledger.mark()` remembers where both files end; `writes(mark)`/`events(mark)` return
what was added since, so a test takes the mark after arranging its resources and counts exactly
what the bridge wrote. A journal rotation inside a window fails the count loudly.

The positive marker: to show that nothing *else* was written, a test flips a `Marker` (a device
it plays itself) after the act, and waits for its status and an idle bridge (see `Marker`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from devicefabric.bridge.controlplane.local.store import LocalStore
from tests.support.mqtt import Client, connect
from tests.support.processes import BridgeProcess, Doc
from tests.support.resources import manifest, reason

if TYPE_CHECKING:
    from devicefabric.bridge.controlplane.local.userfiles import Manifest
    from tests.support.fabric import Fabric


# -- counting writes ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Mark:
    inode: int
    offset: int
    events: int
    at: float  # monotonic


class Ledger:
    """Status writes and Events of a local control plane since a `Mark` (see the module doc)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def mark(self, timeout: float = 5.0) -> Mark:
        """The journal's end, once it has caught up with the store's revision: a write whose
        status file is already readable (what the caller waited for) may not be journaled yet,
        and would otherwise be counted inside the window."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.store.journal_path.read_bytes()
                inode = self.store.journal_path.stat().st_ino
            except FileNotFoundError:
                data, inode = b"", 0
            lines = data.splitlines()
            last = int(lines[-1].split(b" ", 1)[0]) if lines else 0
            if last >= self.store.revision() or time.monotonic() > deadline:
                return Mark(inode, len(data), len(self.store.events()), time.monotonic())
            time.sleep(0.005)

    def entries(self, since: Mark) -> list[str]:
        """Keys of the journal lines written since `since`, in order."""
        path = self.store.journal_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        if since.inode and stat.st_ino != since.inode:
            raise AssertionError("the journal rotated inside the counted window: cannot count")
        with path.open("rb") as fh:
            fh.seek(since.offset)
            text = fh.read().decode()
        return [line.partition(" ")[2] for line in text.splitlines() if line]

    def writes(self, since: Mark) -> Counter[str]:
        """Journal lines per key since `since` (status patches, plus any apply in the window)."""
        return Counter(self.entries(since))

    def events(self, since: Mark) -> list[Doc]:
        return self.store.events()[since.events :]

    def event_reasons(
        self, since: Mark, *, exclude: Iterable[str] = ()
    ) -> Counter[tuple[str, str, str]]:
        """(resource name, type, reason) of each Event since `since`, but `exclude`d names'."""
        skip = set(exclude)
        return Counter(
            (str(e["name"]), str(e["type"]), str(e["reason"]))
            for e in self.events(since)
            if e["name"] not in skip
        )


# -- the positive marker --------------------------------------------------------------------------
class Marker:
    """A device the test plays itself, whose transitions show that the bridge caught up.

    To show that nothing *else* was written, a test flips the marker after the act: its birth
    (`Connected`) or its clean exit (`Shutdown`) reaches the bridge after every message the act
    caused (the broker delivers to the bridge's one connection in order), and once the marker's
    status is written and the queue is empty, every write the act could cause has happened.
    """

    def __init__(self, fab: Fabric, device: str = "marker") -> None:
        self.fab = fab
        self.device = device
        self.name = device  # its resource's name
        self.flips = 0
        self.client: Client | None = None

    @property
    def manifest(self) -> Manifest:
        return manifest(self.name, self.device, ["sleep", "600"])

    def flip(self, bridge: BridgeProcess, timeout: float = 15.0) -> None:
        """Connect (or cleanly disconnect) the marker; wait until written and the bridge idle."""
        self.flips += 1
        session = f"marker-{self.flips}"
        topic = self.fab.broker.topics.status(self.device)
        if self.client is None:
            self.client = connect(self.fab.broker, self.device)
            doc: Doc = {"state": "online", "session": session, "heartbeat_s": 3600, "agent": "t"}
            want = "Connected"
        else:
            doc = {"state": "offline", "session": f"marker-{self.flips - 1}", "reason": "shutdown"}
            want = "Shutdown"
        assert self.client.publish(topic, doc, retain=True), "the marker lost its connection"
        if want == "Shutdown":
            self.close()
        self.fab.wait(
            lambda: reason(self.fab.status(self.name)) == want, timeout, f"the marker {want}"
        )
        bridge.wait_idle(timeout)

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
