"""Settings of the Kubernetes control plane: namespace, identity, leader election, timeouts.

Every field documents its unit, default and why. `KubeSettings.from_env(namespace)` reads the
same `DEVICEFABRIC_<FLAG>` variables that `add_flags` wires to flags (e.g. `--lease-duration` and
`DEVICEFABRIC_LEASE_DURATION`), so `bridge run` can expose them as flags without the two drifting,
and a Deployment can set them as env. This module does not import the Kubernetes client: the CLI
can read settings on a bare install and fail with a one-line `ConfigError` (exit 2).

Invariants checked at construction: `lease_duration > renew_deadline > retry_period > 0`. A
leader steps down once it could not renew for `renew_deadline`, which is shorter than the
`lease_duration` a standby waits after the last renewal it saw: two replicas never both believe
they lead (up to clock-rate drift between the two machines, as in client-go).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from devicefabric.bridge.sharding import MAX_SHARDS
from devicefabric.config.deploybundle import LEASE_NAME, NAMESPACE
from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import add_flag, env_name

SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MAX_IDENTITY: Final = 128  # events.k8s.io reportingInstance limit


def default_identity() -> str:
    """`POD_NAME` in Kubernetes (the Deployment sets it), else `<hostname>_<pid>`."""
    pod = os.environ.get("POD_NAME")
    identity = pod or f"{socket.gethostname()}_{os.getpid()}"
    return identity[:MAX_IDENTITY]


def default_lease_namespace(namespace: str | None) -> str:
    """`POD_NAMESPACE`, else the ServiceAccount's namespace, else the watched one, else ours."""
    pod_namespace = os.environ.get("POD_NAMESPACE")
    if pod_namespace:
        return pod_namespace
    try:
        in_cluster = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        in_cluster = ""
    return in_cluster or namespace or NAMESPACE


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """How the bridge talks to Kubernetes; see the module doc."""

    namespace: str | None = None
    """Watch only this namespace (`--namespace`); None watches all. Default: all."""
    identity: str = field(default_factory=default_identity)
    """Lease holder and Event `reportingInstance`: the pod name; unique per replica."""
    lease_name: str = LEASE_NAME
    """Name of the leader-election Lease (`--lease-name`). Default `devicefabric-bridge`."""
    shards: int = 1
    """Shards the devices are split into (`--shards`), one Lease each (`<lease-name>-<k>`), so N
    replicas share the writes (`kube_sharding`). Default 1: one Lease named `lease_name`, only its
    holder writes (unchanged from before sharding). A deployment constant: every replica must use
    the same value, and changing it moves most devices to another shard."""
    lease_namespace: str = NAMESPACE
    """Namespace of the Lease (`--lease-namespace`); see `default_lease_namespace`. It must exist:
    a missing one is a configuration error (`kube_leasing`), not something to retry."""
    lease_duration: float = 15.0
    """s a standby waits after the last renewal it saw before it takes over (client-go: 15)."""
    renew_deadline: float = 10.0
    """s the leader keeps trying to renew before it stops writing (client-go: 10)."""
    retry_period: float = 2.0
    """s between two acquire or renew attempts (client-go: 2); the leader renews this often."""
    request_timeout: float = 10.0
    """s bound of one API call (connect and read), below the core's call timeout."""
    watch_timeout: float = 300.0
    """s a watch asks the server to keep the stream open (jittered up to 2x, like client-go)."""
    page_size: int = 500
    """Items per list page (`limit`), so a large fleet is listed in bounded responses."""
    backoff_initial: float = 0.5
    """s before the first retry of a failed list or watch; doubles per failure."""
    backoff_max: float = 30.0
    """s cap of that back-off."""

    def __post_init__(self) -> None:
        if not self.retry_period > 0:
            raise ConfigError(f"{env_name('--retry-period')} must be > 0")
        if not self.lease_duration > self.renew_deadline > self.retry_period:
            raise ConfigError(
                "leader election needs lease duration > renew deadline > retry period, got "
                f"{env_name('--lease-duration')}={self.lease_duration:g}, "
                f"{env_name('--renew-deadline')}={self.renew_deadline:g}, "
                f"{env_name('--retry-period')}={self.retry_period:g}"
            )
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"{env_name('--shards')} must be 1..{MAX_SHARDS}, got {self.shards}")
        if self.request_timeout <= 0 or self.watch_timeout < 1 or self.page_size < 1:
            raise ConfigError("request timeout, watch timeout and page size must be positive")

    @classmethod
    def from_env(cls, namespace: str | None = None, **overrides: Any) -> KubeSettings:
        """Defaults, then `DEVICEFABRIC_<FLAG>` of every flag in `add_flags`, then `overrides`.

        `overrides` that are None are ignored, so parsed flags can be passed as they are.
        """
        watched = namespace or None  # "" (an empty env variable) means every namespace
        values: dict[str, Any] = {
            "namespace": watched,
            "lease_namespace": default_lease_namespace(watched),
        }
        for flag, name, kind in _FLAGS:
            raw = os.environ.get(env_name(flag))
            if not raw:
                continue
            try:
                values[name] = kind(raw)  # int("2.5") and float("x") raise ValueError
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise ConfigError(f"{env_name(flag)}: expected {what}, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_FLAGS: Final[tuple[tuple[str, str, type[int | float | str]], ...]] = (
    ("--shards", "shards", int),
    ("--lease-name", "lease_name", str),
    ("--lease-namespace", "lease_namespace", str),
    ("--lease-duration", "lease_duration", float),
    ("--renew-deadline", "renew_deadline", float),
    ("--retry-period", "retry_period", float),
)
_FIELDS: Final = frozenset(f.name for f in fields(KubeSettings))
if not {name for _, name, _ in _FLAGS} <= _FIELDS:  # pragma: no cover - a typo fails on import
    raise RuntimeError("a leader-election flag names no KubeSettings field")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the leader-election flags to `bridge run` (each also read from its env variable).

    Then: `KubeSettings.from_env(args.namespace, **flag_values(args))`.
    """
    helps = {
        "shards": "split the devices into N shards, one Lease each (<lease-name>-<k>), so N "
        "replicas share the writes (default 1: one leader)",
        "lease_name": "name of the leader-election Lease (default devicefabric-bridge)",
        "lease_namespace": "namespace of the Lease (default: the pod's namespace)",
        "lease_duration": "seconds a standby waits for the leader's renewal (default 15)",
        "renew_deadline": "seconds the leader retries renewing before it stops (default 10)",
        "retry_period": "seconds between acquire/renew attempts (default 2)",
    }
    for flag, name, kind in _FLAGS:
        add_flag(parser, flag, type=kind, help=helps[name])


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The values of `add_flags`' flags in parsed `args` (None where unset)."""
    return {name: getattr(args, name, None) for _, name, _ in _FLAGS}
