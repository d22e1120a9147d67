"""The control-plane interface the bridge core is written against; both backends implement it.

A backend is an informer: `run(on_change)` lists every DeviceProcess, marks itself synced, then
watches, and calls `on_change(key)` for each added, modified or deleted resource (level-based:
the callback carries only the key; the core reads the current object with `get`). Writes are
`patch_status` (a JSON merge-patch of `status`, applied to the status subresource) and `emit_event`.
Only the leader writes (`leading`); with shards, only the holder of a device's shard (`may_write`). Errors are the bridge's `ConflictError`, `NotFoundError` and `TransientError(retry_after)`.

Keys are `"<namespace>/<name>"`. `Resource.spec` and `Resource.status` are the raw stored
mappings (the core validates the spec with `config.resource.DeviceProcessSpec`, so an invalid spec
is reported on the resource's own status instead of being dropped silently).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True, slots=True)
class Resource:
    """One DeviceProcess as the control plane stores it (read-only snapshot)."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, object]
    status: Mapping[str, object] = field(default_factory=dict)
    creation_timestamp: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def device(self) -> str | None:
        """`spec.deviceName` when it is a string (validity is checked by the core)."""
        value = self.spec.get("deviceName")
        return value if isinstance(value, str) else None


class ControlPlane(Protocol):
    """What the bridge core needs from a control plane."""

    @property
    def synced(self) -> asyncio.Event:
        """Set once the initial list is in the cache (drives `/readyz`)."""
        ...

    @property
    def leading(self) -> asyncio.Event:
        """Set while this replica may write status, Events and `desired` (local: always set).

        Non-leaders keep their caches and device trackers warm, so a takeover writes nothing
        that did not change.
        """
        ...

    @property
    def not_leading(self) -> str | None:
        """Why this replica does not lead (e.g. the last lease error), for `/readyz`; None if it does."""
        ...

    def may_write(self, device: str | None) -> bool:
        """True while this replica may write for `device`: leading, and with `--shards` > 1
        holding the device's shard (`bridge.sharding`) within its renew deadline."""
        ...

    @property
    def gains(self) -> int:
        """How often this replica gained write access to more devices (a shard) after it first
        led; the bridge reconciles everything again when it moves (one leader: always 0)."""
        ...

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shards this replica holds with `--shards` > 1, for `/readyz`; None otherwise."""
        ...

    async def run(self, on_change: Callable[[str], None]) -> None:
        """List, then watch until cancelled; call `on_change(key)` for every change."""
        ...

    def get(self, key: str) -> Resource | None:
        """The cached resource, or None once deleted."""
        ...

    def resources(self) -> Iterable[Resource]:
        """Every cached resource."""
        ...

    async def patch_status(self, key: str, patch: Mapping[str, object]) -> None:
        """Merge-patch `status` of `key` with `patch` (a dict of status fields, None deletes)."""
        ...

    async def emit_event(self, key: str, type_: EventType, reason: str, message: str) -> None:
        """Record an Event about `key` (reporting controller: the bridge)."""
        ...
