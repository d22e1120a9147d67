"""Leader election with a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does.

One Lease (`--lease-name` in `--lease-namespace`) names the replica that may write. Every
`retry_period` a replica tries to acquire or renew it:

- no Lease: create it holding it (a 409 means another replica won the race);
- held by another replica whose record changed less than its `leaseDurationSeconds` ago *by our
  own monotonic clock* (we never compare the holder's timestamps with our clock, so clock skew
  between machines cannot shorten a lease): wait;
- otherwise (ours, expired, or released with an empty holder): update it with our identity and a
  new `renewTime`, using the Lease's `resourceVersion` as a precondition, so of two standbys racing
  for an expired Lease exactly one wins (the other gets 409).

The leader renews every `retry_period` with the Lease it last wrote (one PUT, no GET, while that
succeeds). It sets `leading` when it acquires and clears it when it could not renew for
`renew_deadline`, which is shorter than the `lease_duration` a standby waits: the old leader has
stopped writing before anyone else may start. On shutdown (cancellation) a leader clears
`leading` first and then releases the Lease (empty holder), so a standby takes over at its next
attempt instead of waiting out the duration. A killed leader is replaced within `lease_duration`
plus two `retry_period`s of its last renewal: the standby's observation lags by at most one
period and its attempts are one period apart.

A Lease namespace that does not exist is a configuration error, not a transient one: the create
answered 404 `namespaces "x" not found` raises `ConfigError` naming the namespace and
`--lease-namespace` (the bridge exits 2), instead of retrying forever without ever writing.
Every other failed attempt is retried; `not_leading` says why this replica does not lead (the
last attempt's outcome: held by whom, or the error), for `/readyz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final

from devicefabric.bridge.controlplane.kube.client import KubeClient, micro_time
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.errors import ConflictError, ControlPlaneError, NotFoundError
from devicefabric.bridge.sharding import LeaseRecord
from devicefabric.config.errors import ConfigError

log = logging.getLogger("devicefabric.bridge.leader")

LEASES: Final = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
JITTER: Final = 0.2  # standbys spread their attempts by up to 20% of the retry period


class Elector:
    """What a Lease holder is made of (the leader's and the shards' electors): the API client,
    the settings (identity, Lease name and timings), the event it sets while this replica may
    write, and the monotonic clock Lease ages are measured with."""

    def __init__(
        self,
        client: KubeClient,
        settings: KubeSettings,
        leading: asyncio.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings
        self._leading = leading
        self._clock = clock
        self._prepare()

    def _prepare(self) -> None:
        """The elector's own state (called last by `__init__`)."""

    @property
    def identity(self) -> str:
        return self._settings.identity

    def _claim(self, lease: dict[str, Any]) -> dict[str, Any]:
        """A copy of `lease` rewritten to say we hold it as of now (a new holder: acquired now,
        one more transition if the Lease existed)."""
        now = micro_time()
        claimed = copy.deepcopy(lease)
        spec = claimed.setdefault("spec", {})
        record = LeaseRecord.of(lease)
        if record.holder != self.identity:
            spec["acquireTime"] = now
            exists = bool((lease.get("metadata") or {}).get("resourceVersion"))
            spec["leaseTransitions"] = record.transitions + 1 if exists else 0
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, round(self._settings.lease_duration))
        spec["renewTime"] = now
        return claimed


class LeaderElector(Elector):
    """Runs the election loop; `leading` is set exactly while this replica may write."""

    def _prepare(self) -> None:
        settings = self._settings
        self._path = LEASES.format(namespace=settings.lease_namespace) + f"/{settings.lease_name}"
        self._lease: dict[str, Any] | None = None  # the Lease as we last saw it
        self._observed_at = 0.0  # our monotonic time when its record last changed
        self.not_leading: str | None = "no attempt to acquire the lease yet"
        """Why this replica does not lead (the last attempt's outcome); None once it leads."""

    @property
    def lease(self) -> str:
        """The Lease as `namespace/name`, for messages."""
        return f"{self._settings.lease_namespace}/{self._settings.lease_name}"

    # -- one attempt ---------------------------------------------------------------------------
    def _observe(self, lease: dict[str, Any]) -> None:
        previous = LeaseRecord.of(self._lease) if self._lease is not None else None
        if LeaseRecord.of(lease) != previous:
            self._observed_at = self._clock()
        self._lease = lease

    def _held_by_other(self) -> bool:
        if self._lease is None:
            return False
        record = LeaseRecord.of(self._lease)
        valid = self._observed_at + record.duration > self._clock()
        return bool(record.holder) and record.holder != self.identity and valid

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards. API errors propagate."""
        if self._leading.is_set() and self._lease is not None:
            with contextlib.suppress(ConflictError, NotFoundError):
                lease = await self._client.call("PUT", self._path, body=self._claim(self._lease))
                self._observe(lease)
                return True
        try:
            self._observe(await self._client.call("GET", self._path))
        except NotFoundError:
            new = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._settings.lease_name},
                "spec": {},
            }
            try:
                created = await self._client.call(
                    "POST", self._path.rsplit("/", 1)[0], body=self._claim(new)
                )
            except ConflictError:
                self.not_leading = f"lease {self.lease}: another replica created it first"
                return False
            except NotFoundError as exc:
                if exc.kind == "namespaces":
                    namespace = self._settings.lease_namespace
                    raise ConfigError(
                        f"the Lease namespace {namespace!r} does not exist: create it (kubectl "
                        f"create namespace {namespace}) or name another with --lease-namespace"
                    ) from exc
                raise
            self._observe(created)
            return True
        current = self._lease
        if current is None or self._held_by_other():
            holder = LeaseRecord.of(current).holder if current is not None else "?"
            self.not_leading = f"lease {self.lease} is held by {holder}"
            return False
        try:
            self._observe(await self._client.call("PUT", self._path, body=self._claim(current)))
        except ConflictError:
            self.not_leading = f"lease {self.lease}: another replica wrote it first"
            return False
        return True

    async def _attempt(self, bound: float) -> bool:
        try:
            async with asyncio.timeout(bound):
                held = await self.try_acquire_or_renew()
        except (ControlPlaneError, TimeoutError) as exc:
            log.warning("lease %s: attempt failed: %s", self._path, exc or type(exc).__name__)
            self.not_leading = f"lease {self.lease}: {exc or type(exc).__name__}"
            return False
        if held:
            self.not_leading = None
        return held

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Elect until cancelled; a leader releases the Lease on the way out."""
        settings = self._settings
        try:
            while True:
                while not await self._attempt(settings.request_timeout):
                    spread = 1 + random.uniform(0, JITTER)  # noqa: S311 - jitter, not crypto
                    await asyncio.sleep(settings.retry_period * spread)
                self._leading.set()
                log.info("leading: holding lease %s as %s", self._path, self.identity)
                await self._hold()
                self._leading.clear()
                log.warning("stopped leading: no renewal within %ss", settings.renew_deadline)
                self.not_leading = (
                    f"stopped leading: no renewal within {settings.renew_deadline:g}s "
                    f"({self.not_leading})"
                )
        finally:
            if self._leading.is_set():
                self._leading.clear()
                await self._release()

    async def _hold(self) -> None:
        """Renew every retry period; return once renewing failed for `renew_deadline`."""
        settings = self._settings
        renewed = self._clock()
        while True:
            await asyncio.sleep(settings.retry_period)
            left = settings.renew_deadline - (self._clock() - renewed)
            if await self._attempt(max(0.001, min(left, settings.request_timeout))):
                renewed = self._clock()
            elif self._clock() - renewed >= settings.renew_deadline:
                return

    async def _release(self) -> None:
        if self._lease is None:
            return
        released = copy.deepcopy(self._lease)
        spec = released.setdefault("spec", {})
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time())
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                await self._client.call("PUT", self._path, body=released)
        except (ControlPlaneError, TimeoutError) as exc:
            log.warning("lease %s: not released (standbys wait it out): %s", self._path, exc)
        else:
            log.info("released lease %s", self._path)
