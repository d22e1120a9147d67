"""Lease per shard: the IO shell of the sharded bridge (`--shards N`, N > 1).

Every replica runs one `ShardElector`. Its Leases live in `--lease-namespace` and carry the label
`devicefabric.io/bridge-lease=<--lease-name>`, so one LIST shows them all:

- `<lease-name>-<k>` for shard k (`devicefabric-bridge-0` ... `-<N-1>`): its holder writes the
  statuses, Events and `desired` of the devices whose `sharding.shard_of(name, N)` is k;
- `<lease-name>-member-<hash of identity>`: held by each live replica, so a replica that holds no
  shard yet (a new one) counts in everyone's fair share, once it was seen renewing it (the
  membership of a killed replica, seen for the first time, does not count).

Every `retry_period` (jittered) a round: renew the membership and every held shard (one PUT each
with the Lease last seen, no GET), LIST the Leases, `sharding.decide`, release the extras, then try
to acquire free ones (POST when missing, PUT with the listed resourceVersion when released or
expired: of two replicas racing, one gets 409). A renewal answered 409/404 loses the shard at
once; one that fails otherwise keeps it until `renew_deadline` after the last success, when the
shard lapses (`Tenure`), well before `lease_duration` lets another replica claim it.

Release (over share, or shutdown): stop writing for the shard (`Tenure.drop`), wait until no write
of it is under way, then PUT the Lease with an empty holder (writes still under way after one
retry period leave the Lease to expire instead, a lease duration later). A
killed replica's shards are claimed by the others within `lease_duration` plus about two rounds.

Leases carry the writer's `--shards` (label `devicefabric.io/shards`). Shard k of another count
names other devices, so a replica that sees a shard Lease validly held under another count
releases what it holds, claims nothing and says why (`not_leading`); membership Leases of another
count are ignored, so an established replica keeps writing while a misconfigured newcomer waits.

`gains` counts successful acquisitions; the bridge resyncs (re-plans every key and device, writing
only where the stored state differs) when it moves. `leading` is set while at least one shard is
held. A replica that stops cleanly deletes its membership Lease; one left behind by a killed
replica is deleted by the others once nobody held it for `GC_AFTER` lease durations (DELETE with
its resourceVersion as precondition, so a replica that came back in between keeps it). Pods get
new names on every rollout: without this every rollout would leave Leases behind for ever. Shard
Leases are never deleted (there are N of them, reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
from collections.abc import Awaitable, Iterator
from typing import Any, Final

from devicefabric.bridge.controlplane.kube.client import micro_time
from devicefabric.bridge.controlplane.kube.leasing import JITTER, LEASES, Elector
from devicefabric.bridge.errors import (
    ConflictError,
    ControlPlaneError,
    NotFoundError,
    TransientError,
)
from devicefabric.bridge.sharding import (
    MEMBER_SUFFIX,
    LeaseClock,
    LeaseRecord,
    Tenure,
    collectable,
    decide,
    member_lease,
    shard_lease,
    shard_of,
)
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import is_device_name

log = logging.getLogger("devicefabric.bridge.shards")

LABEL: Final = "devicefabric.io/bridge-lease"
SHARDS_LABEL: Final = "devicefabric.io/shards"  # the --shards of the replica that wrote it
DRAIN_STEP: Final = 0.005  # s between checks that a released shard's writes have finished
GC_AFTER: Final = 5  # x lease duration nobody held a membership Lease before it is deleted
GC_BATCH: Final = 10  # membership Leases deleted per round at most


class ShardElector(Elector):
    """Holds a fair share of the shard Leases; see the module doc."""

    def _prepare(self) -> None:
        settings = self._settings
        self.shards = settings.shards
        self._collection = LEASES.format(namespace=settings.lease_namespace)
        self._names = [shard_lease(settings.lease_name, k) for k in range(self.shards)]
        self._member = member_lease(settings.lease_name, settings.identity)
        self._leases: dict[str, dict[str, Any]] = {}  # name -> the Lease as last seen
        self._observed = LeaseClock()
        self.tenure = Tenure(settings.renew_deadline)
        self.gains = 0
        """Successful shard acquisitions so far (the bridge resyncs when this moves)."""
        self.not_leading: str | None = "no attempt to acquire a shard yet"
        """Why this replica holds no shard (for `/readyz`); None while it holds one."""
        self._trouble: str | None = None  # the last failure of the current round

    # -- the write gate (event loop only) -------------------------------------------------------
    def shard(self, device: str | None) -> int:
        """The shard of `device`; a resource without a valid device name (its status says
        InvalidSpec) belongs to shard 0's holder, whichever spelling of "no device" is passed."""
        return shard_of(device, self.shards) if device and is_device_name(device) else 0

    def may_write(self, device: str | None) -> bool:
        return self.tenure.may_write(self.shard(device), self._clock())

    @contextlib.contextmanager
    def writing(self, device: str | None) -> Iterator[None]:
        """Count one write of `device`'s shard as under way; refuse it when the shard is not ours."""
        shard = self.shard(device)
        if not self.tenure.may_write(shard, self._clock()):
            raise TransientError(f"shard {shard} (device {device!r}) is not held by this replica")
        self.tenure.in_flight[shard] += 1
        try:
            yield
        finally:
            self.tenure.in_flight[shard] -= 1

    def held(self) -> list[int]:
        return self.tenure.held()

    # -- Lease documents ------------------------------------------------------------------------
    def _claim_shard(self, name: str, lease: dict[str, Any] | None) -> dict[str, Any]:
        """`Elector._claim` of Lease `name` (a new one when None), labelled as ours."""
        if lease is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name},
                "spec": {},
            }
        claimed = self._claim(lease)
        labels = claimed.setdefault("metadata", {}).setdefault("labels", {})
        labels.update({LABEL: self._settings.lease_name, SHARDS_LABEL: str(self.shards)})
        return claimed

    async def _put(self, name: str, body: dict[str, Any]) -> bool:
        """PUT (or POST when never seen) `body`; True when written. 409/404 -> False."""
        exists = bool((body.get("metadata") or {}).get("resourceVersion"))
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                if exists:
                    written = await self._client.call(
                        "PUT", f"{self._collection}/{name}", body=body
                    )
                else:
                    written = await self._client.call("POST", self._collection, body=body)
        except (ConflictError, NotFoundError) as exc:
            if isinstance(exc, NotFoundError) and exc.kind == "namespaces":
                namespace = self._settings.lease_namespace
                raise ConfigError(
                    f"the Lease namespace {namespace!r} does not exist: create it (kubectl "
                    f"create namespace {namespace}) or name another with --lease-namespace"
                ) from exc
            self._leases.pop(name, None)  # re-read at the next LIST
            return False
        self._leases[name] = written
        self._observed.observe(name, written, self._clock())
        return True

    async def _try(self, what: str, step: Awaitable[bool]) -> bool | None:
        """`step`'s answer; None (logged, kept for `not_leading`) when it failed otherwise."""
        try:
            return await step
        except (ControlPlaneError, TimeoutError) as exc:
            log.warning("%s failed: %s", what, exc or type(exc).__name__)
            self._trouble = f"{what}: {exc or type(exc).__name__}"
            return None

    # -- one round ------------------------------------------------------------------------------
    async def _renew(self) -> None:
        await self._try(
            "membership renewal",
            self._put(
                self._member, self._claim_shard(self._member, self._leases.get(self._member))
            ),
        )
        for shard in self.tenure.held():
            name = self._names[shard]
            lease = self._leases.get(name)
            if lease is None:
                self._lose(shard, "its Lease changed under us")
                continue
            sent = self._clock()
            ok = await self._try(
                f"renewing {name}", self._put(name, self._claim_shard(name, lease))
            )
            if ok:
                self.tenure.renewed(shard, sent)
            elif ok is False:
                self._lose(shard, "another replica wrote its Lease")
        for shard in self.tenure.lapsed(self._clock()):
            self._lose(shard, f"no renewal within {self._settings.renew_deadline:g}s")

    def _lose(self, shard: int, why: str) -> None:
        if shard in self.tenure.held():
            self.tenure.drop(shard)
            log.warning("lost shard %d: %s", shard, why)

    async def _list(self) -> bool:
        async def step() -> bool:
            async with asyncio.timeout(self._settings.request_timeout):
                listed = await self._client.call(
                    "GET",
                    self._collection,
                    query=[("labelSelector", f"{LABEL}={self._settings.lease_name}")],
                )
            now = self._clock()
            fresh: dict[str, dict[str, Any]] = {}
            for item in listed.get("items") or []:
                name = (item.get("metadata") or {}).get("name")
                if isinstance(name, str):
                    fresh[name] = item
                    self._observed.observe(name, item, now)
            for gone in set(self._leases) - set(fresh):  # deleted since: forget them
                self._observed.forget(gone)
            self._leases = fresh
            return True

        return bool(await self._try("listing the shard Leases", step()))

    def _view(self) -> tuple[dict[int, str], set[str]]:
        now = self._clock()
        holders: dict[int, str] = {}
        for shard, name in enumerate(self._names):
            if self.tenure.may_write(shard, now):
                holders[shard] = self.identity
            elif (
                holder := self._observed.holder(name, now)
            ) is not None and holder != self.identity:
                holders[shard] = holder
        prefix = f"{self._settings.lease_name}-{MEMBER_SUFFIX}-"
        members = {
            holder
            for name, lease in self._leases.items()
            if name.startswith(prefix)
            and self._shards_label(lease) in (None, str(self.shards))
            and self._observed.renewed_since_seen(name)  # see LeaseClock: a live one renews
            and (holder := self._observed.holder(name, now)) is not None
        }
        return holders, members

    @staticmethod
    def _shards_label(lease: dict[str, Any]) -> str | None:
        labels = (lease.get("metadata") or {}).get("labels") or {}
        value = labels.get(SHARDS_LABEL)
        return value if isinstance(value, str) else None

    def _conflict(self) -> str | None:
        """Why this replica may not write: another runs with another `--shards` (else None).

        Its shard k names other devices than ours: both writing would be two writers for one
        device. The replica that holds shard Leases first keeps writing; one that comes later
        with another count holds nothing (membership Leases alone do not count, so the
        established replicas are not stopped by a misconfigured newcomer).
        """
        now = self._clock()
        members = f"{self._settings.lease_name}-{MEMBER_SUFFIX}-"
        for name, lease in sorted(self._leases.items()):
            if name.startswith(members):
                continue
            theirs = self._shards_label(lease)
            holder = self._observed.holder(name, now)
            if theirs not in (None, str(self.shards)) and holder not in (None, self.identity):
                return (
                    f"lease {name} is held by {holder} with --shards {theirs}, this replica has "
                    f"--shards {self.shards}: every replica must use the same; writes paused"
                )
        return None

    async def round(self) -> None:
        """One round: renew, list, release extras, acquire free shards."""
        self._trouble = None
        await self._renew()
        if not await self._list():
            self._update_leading()
            return
        conflict = self._conflict()
        if conflict is not None:
            if conflict != self.not_leading:
                log.error("%s", conflict)
            for shard in self.tenure.held():
                await self._release(shard)
            self._trouble = conflict
            self._update_leading()
            return
        holders, members = self._view()
        decision = decide(self.identity, self.shards, holders, members)
        for shard in decision.release:
            await self._release(shard)
        for shard in decision.acquire:
            name = self._names[shard]
            sent = self._clock()
            ok = await self._try(
                f"acquiring {name}",
                self._put(name, self._claim_shard(name, self._leases.get(name))),
            )
            if ok:
                self.tenure.renewed(shard, sent)
                self.gains += 1
                log.info("acquired shard %d (lease %s)", shard, name)
        await self._collect()
        self._update_leading()

    async def _delete(self, name: str, *, precondition: bool = True) -> bool:
        """DELETE `name` (if still at the resourceVersion we saw: someone else's Lease may have
        been renewed meanwhile); True when it is gone. Our own needs no precondition: only we
        write it, and the version we saw may be stale after a renewal cut short by shutdown."""
        rv = (self._leases.get(name, {}).get("metadata") or {}).get("resourceVersion")
        body = {"preconditions": {"resourceVersion": rv}} if rv and precondition else None
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                await self._client.call("DELETE", f"{self._collection}/{name}", body=body)
        except NotFoundError:
            pass  # someone else collected it
        except ConflictError:
            return False  # renewed meanwhile: its replica is back
        self._leases.pop(name, None)
        self._observed.forget(name)
        return True

    async def _collect(self) -> None:
        """Delete membership Leases of replicas that are gone (see `sharding.collectable`)."""
        prefix = f"{self._settings.lease_name}-{MEMBER_SUFFIX}-"
        others = [n for n in self._leases if n.startswith(prefix) and n != self._member]
        after = GC_AFTER * self._settings.lease_duration
        for name in collectable(self._observed, others, self._clock(), after, GC_BATCH):
            if await self._try(f"deleting the left-behind {name}", self._delete(name)):
                log.info("deleted membership lease %s (nobody held it for %gs)", name, after)

    def _update_leading(self) -> None:
        if self.tenure.held():
            self._leading.set()
            self.not_leading = None
        else:
            self._leading.clear()
            self.not_leading = self._trouble or (
                f"holds none of the {self.shards} shards: the other replicas hold their fair share"
            )

    async def _release(self, shard: int) -> None:
        """Stop writing for `shard`, let its writes under way finish, then give its Lease up.

        Writes still under way after one retry period (a hung request) leave the Lease to expire
        instead: released now, a new holder could write before the hung write lands, and the
        other shards' renewals must not wait on it.
        """
        name = self._names[shard]
        self.tenure.drop(shard)
        deadline = self._clock() + self._settings.retry_period
        while self.tenure.in_flight[shard] > 0:
            if self._clock() >= deadline:
                log.warning("shard %d: writes still under way, its lease %s expires", shard, name)
                return
            await asyncio.sleep(DRAIN_STEP)
        if await self._try(f"releasing {name}", self._give_up(name)):
            log.info("released shard %d (lease %s)", shard, name)

    async def _give_up(self, name: str) -> bool:
        """PUT `name` with an empty holder. A 409 means the version we hold is stale (e.g. a
        renewal cut short by shutdown got through): read it again and retry once, if still ours."""
        for attempt in range(2):
            lease = self._leases.get(name)
            if lease is None or attempt:
                async with asyncio.timeout(self._settings.request_timeout):
                    lease = await self._client.call("GET", f"{self._collection}/{name}")
                if LeaseRecord.of(lease).holder != self.identity:
                    return False
            released = copy.deepcopy(lease)
            released.setdefault("spec", {}).update(
                holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time()
            )
            if await self._put(name, released):
                return True
        return False

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Rounds until cancelled; then release every shard and the membership."""
        try:
            while True:
                await self.round()
                spread = 1 + random.uniform(0, JITTER)  # noqa: S311 - jitter, not crypto
                await asyncio.sleep(self._settings.retry_period * spread)
        finally:
            self._leading.clear()
            for shard in self.tenure.held():
                await self._release(shard)
            member = self._leases.get(self._member)
            if member is not None and LeaseRecord.of(member).holder == self.identity:
                await self._try(
                    "deleting the membership", self._delete(self._member, precondition=False)
                )
