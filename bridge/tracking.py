"""Device tracking: the pure core that turns device messages into connection transitions.

`DeviceTracker` is fed decoded `status`, `heartbeat` and `report` messages with the bridge's
monotonic clock (`now`, seconds) and returns what changed: `Transition`s of a device's
`AgentConnected` reason and `ReportChanged` sets of resource keys. It does no IO and never reads a
clock itself, so every rule below is a table-driven test.

Per device it keeps the current session, the connection reason, `last_seen` (the bridge's clock,
never the device's), `heartbeat_s`, the agent version and the device facts from the latest birth
(`facts`: a read-only mapping keyed by the Device status field names of `config.fleet.FACT_FIELDS`,
holding only the facts that birth carried), and the last report.

Rules:
- A live birth (`online`, not a retained replay) -> `Connected` with its session.
- An `offline` of the *current* session -> `ConnectionLost` (will) or `Shutdown` (clean exit),
  except the will of a session already timed out: the outage was written once (`HeartbeatTimeout`)
  and the broker's keepalive firing later is no news, so it changes nothing. An
  `offline` of any other session is a late will of a taken-over connection: ignored (its session
  is remembered as dead so its stragglers are ignored too).
- A heartbeat or live report of the current session refreshes `last_seen`; from an unknown device,
  a stale one, or a disconnected one under a new session, it brings the device back
  (`Connected`) once. Messages of dead sessions change nothing.
- No heartbeat or live report within `stale_multiplier x heartbeat_s` -> `HeartbeatTimeout`,
  decided once by `sweep`. Deadlines live in a heap with lazy invalidation: a heartbeat only moves
  the device's own deadline (O(1), no heap operation); `sweep` pops only entries whose original
  deadline passed and re-pushes those that moved, so each healthy device costs one heap operation
  per stale window, not per tick or per heartbeat.
- Facts are data, not liveness: every birth replaces them (one without facts clears them), and a
  birth that changes only facts is no transition.
- Retained replays (bridge start or broker reconnect) are facts about the past, not liveness: a
  replayed `online` under a session we do not know leaves the device *unconfirmed* (`reason` is
  None) with a fresh deadline. Callers keep the stored condition of an unconfirmed device, so a
  restart writes no transition that did not happen; the first heartbeat confirms it, silence
  times it out. A replayed `offline` of the current (or a first-seen) session is a real transition.
- `resume(now)` after the bridge's own MQTT outage pushes every deadline to `now + window`: the
  devices are not to blame for heartbeats the bridge could not receive.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from devicefabric.config.fleet import FACT_FIELDS
from devicefabric.config.resource import Reason
from devicefabric.config.settings import DEFAULT_HEARTBEAT_S, DEFAULT_STALE_MULTIPLIER
from devicefabric.config.wire import Heartbeat, Report, StatusOffline, StatusOnline

DEAD_SESSIONS_KEPT: Final = 4
CONNECTION_REASONS: Final = frozenset(
    {Reason.CONNECTED, Reason.CONNECTION_LOST, Reason.SHUTDOWN, Reason.HEARTBEAT_TIMEOUT}
)
_OFFLINE_REASON: Final = {"lost": Reason.CONNECTION_LOST, "shutdown": Reason.SHUTDOWN}
Facts = Mapping[str, str | int]
NO_FACTS: Final[Facts] = MappingProxyType({})


def facts_of(doc: StatusOnline) -> Facts:
    """The birth's device facts keyed by Device status field (`memoryBytes`), only those sent."""
    facts = {
        status: value for birth, status in FACT_FIELDS if (value := getattr(doc, birth)) is not None
    }
    return MappingProxyType(facts) if facts else NO_FACTS


@dataclass(slots=True)
class Device:
    """What the bridge knows about one device (mutated only by `DeviceTracker`)."""

    name: str
    session: str | None = None
    reason: Reason | None = None  # None: never heard of, or known only from a retained replay
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    agent: str = ""
    facts: Facts = field(default_factory=lambda: NO_FACTS)  # the latest birth's; see `facts_of`
    born: str | None = None  # session of the latest birth seen (None: its fields are unknown)
    last_seen: float | None = None  # bridge monotonic time of the last live message
    deadline: float | None = None  # goes stale at this time; None when not expected to beat
    queued: bool = False  # an entry for this device is in the deadline heap...
    queued_at: float | None = None  # ...with this deadline (other entries are stale)
    report: Report | None = None
    dead: list[str] = field(default_factory=list)  # recently ended sessions, newest last

    @property
    def state(self) -> str:
        """`connected`, `disconnected` or `unknown` (for `/devices` and metrics)."""
        if self.reason is Reason.CONNECTED:
            return "connected"
        if self.reason is None:
            return "unknown"
        return "disconnected"


@dataclass(frozen=True, slots=True)
class Transition:
    """The device's `AgentConnected` reason changed from `previous` to `reason`."""

    device: str
    reason: Reason
    previous: Reason | None
    session: str

    @property
    def connected(self) -> bool:
        return self.reason is Reason.CONNECTED


@dataclass(frozen=True, slots=True)
class ReportChanged:
    """Report entries that changed: `keys`, or every resource of the device when None."""

    device: str
    keys: frozenset[str] | None


Change = Transition | ReportChanged
NOTHING: Final[tuple[Change, ...]] = ()


class DeviceTracker:
    """Per-device connection state from messages and the bridge's clock; see the module doc."""

    def __init__(
        self,
        stale_multiplier: float = DEFAULT_STALE_MULTIPLIER,
        default_heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    ) -> None:
        if stale_multiplier <= 1:
            raise ValueError("stale_multiplier must be > 1")
        self.stale_multiplier = stale_multiplier
        self.default_heartbeat_s = default_heartbeat_s
        self._devices: dict[str, Device] = {}
        self._heap: list[tuple[float, str]] = []

    # -- reading ---------------------------------------------------------------------------------
    def get(self, name: str) -> Device | None:
        return self._devices.get(name)

    def __iter__(self) -> Iterator[Device]:
        return iter(self._devices.values())

    def __len__(self) -> int:
        return len(self._devices)

    def names(self) -> Iterator[str]:
        return iter(self._devices)

    def counts(self) -> dict[str, int]:
        """Number of devices per `Device.state`."""
        out = {"connected": 0, "disconnected": 0, "unknown": 0}
        for device in self._devices.values():
            out[device.state] += 1
        return out

    def next_deadline(self) -> float | None:
        """The earliest heap entry (may be stale-early: `sweep` then just re-pushes it)."""
        return self._heap[0][0] if self._heap else None

    # -- feeding ---------------------------------------------------------------------------------
    def status(
        self, name: str, doc: StatusOnline | StatusOffline, now: float, *, retained: bool = False
    ) -> tuple[Change, ...]:
        """A `status` document (birth, will or clean offline); `retained` when replayed."""
        device = self._device(name)
        if doc.session in device.dead:
            return NOTHING
        if isinstance(doc, StatusOffline):
            return self._offline(device, doc)
        device.heartbeat_s = doc.heartbeat_s
        device.agent = doc.agent
        device.born = doc.session
        device.facts = facts_of(doc)  # data, not a transition: the rules below ignore it
        if not retained:
            return self._alive(device, doc.session, now, birth=True)
        if doc.session == device.session:
            return NOTHING
        # A session we did not see being born: it reconnected while we were not looking. Connected
        # stays connected (under the new session); anything else waits, unconfirmed, for a beat.
        if device.session is not None and device.reason is Reason.CONNECTED:
            self._retire(device, device.session)
        device.session = doc.session
        if device.reason is not Reason.CONNECTED:
            device.reason = None
            self._expect(device, now)
        return NOTHING

    def heartbeat(self, name: str, doc: Heartbeat, now: float) -> tuple[Change, ...]:
        """A heartbeat (never retained). The hot path: no allocation when nothing changes."""
        device = self._devices.get(name)
        if device is None:
            device = self._device(name)
        elif doc.session == device.session and device.reason is Reason.CONNECTED:
            device.last_seen = now
            device.deadline = now + device.heartbeat_s * self.stale_multiplier
            if not device.queued:
                self._push(device)
            return NOTHING
        return self._alive(device, doc.session, now, birth=False)

    def last_report(self, name: str) -> Report | None:
        """The device's last accepted report (None when none was seen)."""
        device = self._devices.get(name)
        return None if device is None else device.report

    def report(
        self, name: str, doc: Report, now: float, *, retained: bool = False
    ) -> tuple[Change, ...]:
        """A report: kept as the device's last report whatever its session; live ones are beats."""
        device = self._device(name)
        old, device.report = device.report, doc
        if old is None:
            changed: tuple[Change, ...] = (ReportChanged(name, None),)
        else:
            keys = frozenset(
                key
                for key in old.processes.keys() | doc.processes.keys()
                if old.processes.get(key) != doc.processes.get(key)
            )
            changed = (ReportChanged(name, keys),) if keys else NOTHING
        if retained:
            return changed
        return self._alive(device, doc.session, now, birth=False) + changed

    def sweep(self, now: float) -> list[Transition]:
        """`HeartbeatTimeout` for every device whose deadline passed (each decided once)."""
        out: list[Transition] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry, name = heapq.heappop(heap)
            device = self._devices[name]
            if entry != device.queued_at:
                continue  # superseded by an earlier deadline pushed later
            device.queued, device.queued_at = False, None
            deadline = device.deadline
            if deadline is None:
                continue
            if deadline > now:
                self._push(device)
            else:
                device.deadline = None
                previous, device.reason = device.reason, Reason.HEARTBEAT_TIMEOUT
                if device.session is not None:
                    out.append(Transition(name, Reason.HEARTBEAT_TIMEOUT, previous, device.session))
        return out

    def resume(self, now: float) -> None:
        """After the bridge's own outage: restart every running deadline from `now`."""
        for device in self._devices.values():
            if device.deadline is not None:
                device.deadline = max(device.deadline, now + self._window(device))
                if not device.queued:
                    self._push(device)

    # -- internals -------------------------------------------------------------------------------
    def _device(self, name: str) -> Device:
        device = self._devices.get(name)
        if device is None:
            device = self._devices[name] = Device(name, heartbeat_s=self.default_heartbeat_s)
        return device

    def _window(self, device: Device) -> float:
        return device.heartbeat_s * self.stale_multiplier

    def _push(self, device: Device) -> None:
        assert device.deadline is not None  # noqa: S101 - internal invariant
        heapq.heappush(self._heap, (device.deadline, device.name))
        device.queued, device.queued_at = True, device.deadline

    def _expect(self, device: Device, now: float) -> None:
        device.deadline = now + self._window(device)
        # A shorter window (a new birth with a smaller heartbeat_s) must not wait for the old entry.
        if not device.queued or (
            device.queued_at is not None and device.deadline < device.queued_at
        ):
            self._push(device)

    def _retire(self, device: Device, session: str) -> None:
        if session not in device.dead:
            device.dead.append(session)
            del device.dead[:-DEAD_SESSIONS_KEPT]

    def _alive(
        self, device: Device, session: str, now: float, *, birth: bool
    ) -> tuple[Change, ...]:
        """A live sign of `session`: a birth always adopts it; a beat only a plausible one."""
        if session in device.dead:
            return NOTHING
        if session != device.session:
            if device.reason is Reason.CONNECTED and not birth:
                return NOTHING  # a straggler of an older (or not yet born) connection
            if device.session is not None and device.reason is Reason.CONNECTED:
                self._retire(device, device.session)  # taken over without a will
            device.session = session
        device.last_seen = now
        self._expect(device, now)
        previous = device.reason
        if previous is Reason.CONNECTED:
            return NOTHING
        device.reason = Reason.CONNECTED
        return (Transition(device.name, Reason.CONNECTED, previous, session),)

    def _offline(self, device: Device, doc: StatusOffline) -> tuple[Change, ...]:
        if device.session is not None and doc.session != device.session:
            self._retire(device, doc.session)  # a late will of a taken-over connection
            return NOTHING
        device.session = doc.session
        self._retire(device, doc.session)
        device.deadline = None
        reason = _OFFLINE_REASON[doc.reason]
        previous = device.reason
        if previous is reason or (
            previous is Reason.HEARTBEAT_TIMEOUT and reason is Reason.CONNECTION_LOST
        ):
            return NOTHING
        device.reason = reason
        return (Transition(device.name, reason, previous, doc.session),)
