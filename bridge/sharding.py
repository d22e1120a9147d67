"""Shard ownership: which device belongs to which shard, and which shards a replica should hold.

The pure core of the sharded bridge (`--shards N`); the Lease IO around it is
`controlplane.kube.sharding`. Nothing here reads a clock: `now` is passed in (the replica's
monotonic clock), so every rule is a table-driven test.

- `shard_of(device, n)`: the first 8 bytes of SHA-256 of the device name (UTF-8), big-endian,
  modulo `n`. Stable across processes, machines and Python versions (no `hash()`, whose seed is
  per process); balanced because SHA-256 is uniform. A device's shard changes only when `n`
  does, so `n` is a deployment constant, like a Deployment's replica count is not.
- `decide(...)`: given who validly holds which shard, the live replicas and what this replica
  holds, the shards to acquire and to release. A replica's fair share is `ceil(n / live)`; it
  acquires free shards while under its share (or when every other live replica is at its share,
  so a shard is never left unheld), and releases what is over its share only when another live
  replica has room to take it (no release that nobody would pick up). Free shards are tried in
  the replica's own rendezvous order (`preference`), so replicas racing for free shards mostly
  try different ones; a race is settled by the Lease's resourceVersion (one 409).
- `LeaseClock`: when each Lease's record last changed *by our clock*; a holder is valid for the
  Lease's duration after that (we never compare another machine's timestamps with our clock),
  exactly as `kube.leasing` does for the single Lease.
- `collectable(...)`: membership Leases left behind by replicas that are gone (nobody holds them
  and they have not changed for a while), for deletion: pods get new names, so without it every
  rollout would leave Leases behind for ever.
- `Tenure`: when this replica last renewed each shard it holds (the time the renewal was *sent*).
  It may write for a shard only while held and less than `renew_deadline` after that, which is
  shorter than the `lease_duration` every other replica waits: the old holder stops before a new
  one may start. `in_flight` counts writes under way per shard, so a release can stop writing,
  wait for those to finish, and only then give the Lease up.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

MAX_SHARDS: Final = 1024  # one Lease each; more is a design error, not a deployment
MEMBER_SUFFIX: Final = "member"


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def shard_of(device: str, shards: int) -> int:
    """The shard of `device` among `shards` (0-based); see the module doc."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return _digest(device) % shards


def shard_lease(base: str, shard: int) -> str:
    """The Lease of `shard`: `<base>-<shard>` (`devicefabric-bridge-0`, ...)."""
    return f"{base}-{shard}"


def member_lease(base: str, identity: str) -> str:
    """The membership Lease of replica `identity` (a valid object name whatever the identity)."""
    return f"{base}-{MEMBER_SUFFIX}-{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:12]}"


def fair_share(shards: int, replicas: int) -> int:
    """How many shards one of `replicas` live replicas may hold: ceil(shards / replicas)."""
    return math.ceil(shards / max(1, replicas))


def preference(identity: str, shards: Iterable[int]) -> list[int]:
    """`shards` in `identity`'s rendezvous order (highest random weight first)."""
    return sorted(shards, key=lambda k: (-_digest(f"{identity}/{k}"), k))


@dataclass(frozen=True, slots=True)
class Decision:
    """What one round of the shard elector does."""

    acquire: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


def decide(
    me: str,
    shards: int,
    holders: Mapping[int, str],
    members: Collection[str],
) -> Decision:
    """The shards `me` should acquire and release.

    `holders`: shard -> the replica validly holding it (free shards are absent; `me`'s own shards
    included). `members`: replicas with a valid membership Lease (a replica holding nothing is
    known only from it).
    """
    live = {me, *members, *holders.values()}
    share = fair_share(shards, len(live))
    counts = Counter(holders.values())
    mine = [k for k, holder in holders.items() if holder == me]
    others_room = any(counts[r] < share for r in live if r != me)
    release: list[int] = []
    if len(mine) > share and others_room:
        # Give up the shards we like least, so each replica keeps its rendezvous favourites.
        release = preference(me, mine)[share:]
    free = [k for k in range(shards) if k not in holders]
    room = share - (len(mine) - len(release))
    if room <= 0 and free and not others_room:
        room = len(free)  # nobody else should take them: better over share than unheld
    acquire = preference(me, free)[: max(0, room)]
    return Decision(acquire=tuple(acquire), release=tuple(sorted(release)))


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The fields of a Lease's spec that decide who holds it."""

    holder: str
    duration: float
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: Mapping[str, object]) -> LeaseRecord:
        spec = lease.get("spec")
        spec = spec if isinstance(spec, Mapping) else {}
        renew = spec.get("renewTime")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            renew_time=renew if isinstance(renew, str) else None,
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(slots=True)
class LeaseClock:
    """When each Lease's record last changed by our clock; who validly holds it now."""

    _seen: dict[str, tuple[LeaseRecord, float]] = field(default_factory=dict)
    _renewed: set[str] = field(default_factory=set)  # changed at least once since first seen

    def observe(self, name: str, lease: Mapping[str, object], now: float) -> None:
        record = LeaseRecord.of(lease)
        previous = self._seen.get(name)
        if previous is None or previous[0] != record:
            if previous is not None:
                self._renewed.add(name)
            self._seen[name] = (record, now)

    def renewed_since_seen(self, name: str) -> bool:
        """True once `name`'s record changed after we first saw it: its holder is alive now.

        A Lease seen for the first time is valid for a duration by our clock (we cannot tell how
        old it is), which is right for holding a shard but wrong for counting replicas: a new
        replica would count a killed one's membership as live for a whole lease duration, and
        take too small a share meanwhile.
        """
        return name in self._renewed

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)
        self._renewed.discard(name)

    def names(self) -> list[str]:
        return sorted(self._seen)

    def idle_for(self, name: str, now: float) -> float:
        """Seconds since `name`'s record last changed (0 when never seen)."""
        seen = self._seen.get(name)
        return now - seen[1] if seen is not None else 0.0

    def holder(self, name: str, now: float) -> str | None:
        """The valid holder of `name` at `now`, or None (unknown, released or expired)."""
        seen = self._seen.get(name)
        if seen is None:
            return None
        record, at = seen
        return record.holder if record.holder and at + record.duration > now else None


def collectable(
    clock: LeaseClock, names: Iterable[str], now: float, after: float, limit: int
) -> list[str]:
    """Of `names` (membership Leases of other replicas), those nobody holds and whose record has
    not changed for `after` seconds by our clock: left behind by a replica that was killed or
    stopped; at most `limit` (oldest first), so a backlog is cleared over several rounds."""
    idle = [
        (clock.idle_for(n, now), n)
        for n in names
        if clock.holder(n, now) is None and clock.idle_for(n, now) >= after
    ]
    return [n for _, n in sorted(idle, key=lambda pair: (-pair[0], pair[1]))[:limit]]


@dataclass(slots=True)
class Tenure:
    """The shards this replica holds, when each was last renewed, and writes under way."""

    renew_deadline: float
    _renewed: dict[int, float] = field(default_factory=dict)
    in_flight: Counter[int] = field(default_factory=Counter)

    def renewed(self, shard: int, sent_at: float) -> None:
        """A claim or renewal of `shard`, sent at `sent_at`, succeeded."""
        self._renewed[shard] = sent_at

    def drop(self, shard: int) -> None:
        """Stop writing for `shard` (released or lost)."""
        self._renewed.pop(shard, None)

    def held(self) -> list[int]:
        return sorted(self._renewed)

    def may_write(self, shard: int, now: float) -> bool:
        at = self._renewed.get(shard)
        return at is not None and now - at < self.renew_deadline

    def lapsed(self, now: float) -> list[int]:
        """Held shards whose renewal is older than the deadline (lost: drop them)."""
        return [k for k, at in self._renewed.items() if now - at >= self.renew_deadline]
