"""An in-memory ControlPlane test double that behaves like an informer and counts every write.

Like a Kubernetes informer, `get` reads a cache that lags the store: a status patch is applied to
the store at once (with a new resource version) and reaches the cache, with an `on_change`
notification, `echo_delay` seconds later. That exercises the bridge's handling of its own writes
not yet being visible. Tests arrange resources with `apply`/`delete` and read `writes`/`events`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from devicefabric.bridge.controlplane.base import EventType, Resource, SingleWriter
from devicefabric.bridge.errors import NotFoundError, TransientError


@dataclass(frozen=True, slots=True)
class Write:
    at: float
    key: str
    patch: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    key: str
    type: EventType
    reason: str
    message: str


def resource(
    name: str,
    device: str,
    *,
    namespace: str = "default",
    generation: int = 1,
    command: list[str] | None = None,
    spec: dict[str, Any] | None = None,
    status: dict[str, object] | None = None,
) -> Resource:
    """A DeviceProcess as a control plane would store it."""
    spec = spec if spec is not None else {"deviceName": device, "command": command or ["true"]}
    uid = f"uid-{namespace}-{name}"
    return Resource(namespace, name, uid, generation, "1", spec, status or {})


@dataclass
class MemoryControlPlane(SingleWriter):
    """The test double; see the module doc."""

    echo_delay: float = 0.01
    event_failures: int = 0  # the next N emit_event calls fail with TransientError (an API 5xx)
    writes: list[Write] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    _store: dict[str, Resource] = field(default_factory=dict)
    _cache: dict[str, Resource] = field(default_factory=dict)
    _synced: asyncio.Event = field(default_factory=asyncio.Event)
    _leading: asyncio.Event = field(default_factory=asyncio.Event)
    _on_change: Callable[[str], None] | None = None
    _changes: asyncio.Queue[str] | None = None
    _echoes: int = 0
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def __post_init__(self) -> None:
        self._leading.set()

    # -- the ControlPlane protocol (synced, leading, may_write, gains, shards: SingleWriter) ----
    @property
    def not_leading(self) -> str | None:
        return None if self._leading.is_set() else "leadership withheld by the test"

    async def run(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self._changes = asyncio.Queue()
        for key in list(self._store):
            self._cache[key] = self._store[key]
            on_change(key)
        self._synced.set()
        while True:
            key = await self._changes.get()
            if key in self._store:
                self._cache[key] = self._store[key]
            else:
                self._cache.pop(key, None)
            on_change(key)

    def get(self, key: str) -> Resource | None:
        return self._cache.get(key)

    def resources(self) -> Iterable[Resource]:
        return list(self._cache.values())

    async def patch_status(self, key: str, patch: Mapping[str, object]) -> None:
        current = self._store.get(key)
        if current is None:
            raise NotFoundError(f"{key} not found")
        status = dict(current.status)
        for name, value in patch.items():
            if value is None:
                status.pop(name, None)
            else:
                status[name] = value
        self._store[key] = replace(current, status=status, resource_version=self._next_rv())
        self.writes.append(Write(time.monotonic(), key, dict(patch)))
        self._echo(key)

    async def emit_event(self, key: str, type_: EventType, reason: str, message: str) -> None:
        if self.event_failures > 0:
            self.event_failures -= 1
            raise TransientError("injected: 500 Internal Server Error", retry_after=0.05)
        self.events.append(Event(time.monotonic(), key, type_, reason, message))

    # -- arranging -------------------------------------------------------------------------------
    def apply(self, res: Resource) -> None:
        """Create or replace a resource (the spec; the stored status is kept if not given)."""
        old = self._store.get(res.key)
        if old is not None and not res.status:
            res = replace(res, status=old.status)
        self._store[res.key] = replace(res, resource_version=self._next_rv())
        self._notify(res.key)

    def delete(self, key: str) -> None:
        self._store.pop(key, None)
        self._notify(key)

    def stored(self, key: str) -> Resource:
        return self._store[key]

    def condition(self, key: str, ctype: str) -> dict[str, Any] | None:
        conditions = self._store[key].status.get("conditions")
        assert conditions is None or isinstance(conditions, list)
        for cond in conditions or []:
            if cond["type"] == ctype:
                return dict(cond)
        return None

    def reason(self, key: str, ctype: str = "AgentConnected") -> str | None:
        cond = self.condition(key, ctype)
        return None if cond is None else str(cond["reason"])

    def quiet(self) -> bool:
        """No change is waiting to reach the cache or the bridge's `on_change`."""
        return self._echoes == 0 and (self._changes is None or self._changes.empty())

    def clear_counts(self) -> None:
        self.writes.clear()
        self.events.clear()

    # -- internals -------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        return str(next(self._rv))

    def _notify(self, key: str) -> None:
        if self._changes is not None:
            self._changes.put_nowait(key)

    def _echo(self, key: str) -> None:
        if self._changes is None:
            return
        self._echoes += 1
        asyncio.get_running_loop().call_later(self.echo_delay, self._deliver_echo, key)

    def _deliver_echo(self, key: str) -> None:
        self._echoes -= 1
        self._notify(key)
