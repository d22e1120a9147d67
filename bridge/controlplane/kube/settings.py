"""Settings of the Kubernetes control plane: namespace, identity, leader election, timeouts.

Every field documents its unit, default and why; those with a flag are declared with
`runtime.settings.setting`, so `bridge run` shows them as the "kube control plane" group of its
flags (nested in `bridge.settings.BridgeSettings`), and `KubeSettings.from_env(namespace)` reads
the same `DEVICEFABRIC_<FLAG>` variables (e.g. `--lease-duration` and
`DEVICEFABRIC_LEASE_DURATION`) for a library user: a Deployment can set either. This module does not import the Kubernetes client: the CLI
can read settings on a bare install and fail with a one-line `ConfigError` (exit 2).

Invariants checked at construction: `lease_duration > renew_deadline > retry_period > 0`. A
leader steps down once it could not renew for `renew_deadline`, which is shorter than the
`lease_duration` a standby waits after the last renewal it saw: two replicas never both believe
they lead (up to clock-rate drift between the two machines, as in client-go).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from devicefabric.bridge.sharding import MAX_SHARDS
from devicefabric.config.deploybundle import LEASE_NAME, NAMESPACE
from devicefabric.config.errors import ConfigError
from devicefabric.runtime.settings import flag_of, integer, number, setting
from devicefabric.runtime.settings import from_env as settings_from_env

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


def _namespace(value: str, flag: str) -> str | None:  # noqa: ARG001
    return value or None  # "" (an empty variable) means every namespace


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeSettings:
    """How the bridge talks to Kubernetes; see the module doc."""

    namespace: str | None = setting(
        "--namespace", "watch one namespace (default all)", default=None, parse=_namespace
    )
    """None watches all namespaces."""
    identity: str = field(default_factory=default_identity)
    """Lease holder and Event `reportingInstance`: the pod name; unique per replica."""
    lease_name: str = setting(
        "--lease-name", "name of the leader-election Lease", default=LEASE_NAME
    )
    shards: int = setting(
        "--shards",
        "split the devices into N shards, one Lease each (<lease-name>-<k>), so N replicas share "
        "the writes (1: one leader)",
        default=1,
        parse=integer,
    )
    """A deployment constant (`kube.sharding`): every replica must use the same value, and
    changing it moves most devices to another shard. 1: one Lease named `lease_name`, only its
    holder writes."""
    lease_namespace: str = setting(
        "--lease-namespace",
        "namespace of the Lease",
        default="",
        shown="the pod's namespace",
    )
    """See `default_lease_namespace` (used when empty). It must exist: a missing one is a
    configuration error (`kube.leasing`), not something to retry."""
    lease_duration: float = setting(
        "--lease-duration",
        "seconds a standby waits for the leader's renewal",
        default=15.0,
        parse=number,
    )
    """After the last renewal it saw, before it takes over (client-go: 15)."""
    renew_deadline: float = setting(
        "--renew-deadline",
        "seconds the leader retries renewing before it stops",
        default=10.0,
        parse=number,
    )
    """Then it stops writing (client-go: 10)."""
    retry_period: float = setting(
        "--retry-period", "seconds between acquire/renew attempts", default=2.0, parse=number
    )
    """The leader renews this often (client-go: 2)."""
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
        if not self.lease_namespace:
            object.__setattr__(self, "lease_namespace", default_lease_namespace(self.namespace))

        def env(name: str) -> str:
            return flag_of(KubeSettings, name).env

        if not self.retry_period > 0:
            raise ConfigError(f"{env('retry_period')} must be > 0")
        if not self.lease_duration > self.renew_deadline > self.retry_period:
            raise ConfigError(
                "leader election needs lease duration > renew deadline > retry period, got "
                f"{env('lease_duration')}={self.lease_duration:g}, "
                f"{env('renew_deadline')}={self.renew_deadline:g}, "
                f"{env('retry_period')}={self.retry_period:g}"
            )
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"{env('shards')} must be 1..{MAX_SHARDS}, got {self.shards}")
        if self.request_timeout <= 0 or self.watch_timeout < 1 or self.page_size < 1:
            raise ConfigError("request timeout, watch timeout and page size must be positive")

    @classmethod
    def from_env(cls, namespace: str | None = None, **overrides: Any) -> KubeSettings:
        """Defaults, then the `DEVICEFABRIC_<FLAG>` variables of the fields, then `overrides`
        (those that are None are ignored); `namespace` as given ("" means every namespace)."""
        known = {k: v for k, v in overrides.items() if v is not None}
        return settings_from_env(cls, namespace=namespace or None, **known)
