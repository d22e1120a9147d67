"""What the fake saw and what it should get wrong: the request log and fault injection.

Every request is parsed into Kubernetes' own request attributes (`RequestInfo`: verb, API group,
version, namespace, resource, subresource, name), so tests count writes the way an audit log would
("PATCH deviceprocesses/status") and the RBAC checker can map each request to a rule. Writes keep
their body (`RequestRecord.json()`), so a test can tell who a Lease write named as holder.

A `Fault` answers the next `count` requests matching its filter with `status` (and `Retry-After`
when given) instead of serving them; the log marks those requests `injected`. Filters match on
any subset of verb / group / resource / subresource / namespace / name / user; discovery requests
(non-resource URLs) match only a filter that asks for them explicitly with `verb="get"` and no
resource.

Invariants: the log and the fault list are guarded by one lock; a fault's count is consumed
atomically, so with N concurrent matching requests exactly `count` of them fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

_VERBS: Final = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Kubernetes' RequestInfo for one request (resource None for non-resource URLs)."""

    method: str
    path: str
    query: dict[str, list[str]]
    verb: str
    api_group: str | None = None
    api_version: str | None = None
    namespace: str | None = None
    resource: str | None = None
    subresource: str | None = None
    name: str | None = None

    @property
    def is_resource(self) -> bool:
        return self.resource is not None

    @property
    def resource_path(self) -> str:
        """`deviceprocesses/status`, `leases`: the RBAC resource string."""
        return f"{self.resource}/{self.subresource}" if self.subresource else str(self.resource)

    def param(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[0] if values else None


def parse_request(method: str, target: str) -> RequestInfo:
    """Parse a request line the way the API server's RequestInfoFactory does."""
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    parts = [p for p in split.path.split("/") if p]
    base = RequestInfo(method=method, path=split.path, query=query, verb=method.lower())
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return base  # discovery, /version, /openapi: non-resource URLs
    if not rest:
        return replace(base, api_group=group, api_version=version)
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    watching = query.get("watch", [""])[0] in ("true", "1")
    if method == "GET":
        verb = "watch" if watching else "get" if name else "list"
    elif method == "DELETE" and name is None:
        verb = "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return replace(
        base,
        verb=verb,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One served request: its RequestInfo, who sent it, the answer and when."""

    info: RequestInfo
    user: str
    status: int
    timestamp: float  # time.time()
    monotonic: float  # time.monotonic(), for rates
    content_type: str = ""
    injected: bool = False
    noop: bool = False  # a patch or update that changed nothing (same resourceVersion)
    body: bytes = b""  # what a write sent (e.g. a Lease's holder), empty for reads

    def json(self) -> Any:
        """The request body decoded (None when empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.info.method} {self.info.path} -> {self.status}"


@dataclass(frozen=True, slots=True)
class Match:
    """A request filter; None matches anything."""

    verb: str | None = None
    group: str | None = None
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    user: str | None = None

    def __call__(self, info: RequestInfo, user: str = "") -> bool:
        if not info.is_resource and self.resource is None and self.verb is None:
            return False
        checks = (
            (self.verb, info.verb),
            (self.group, info.api_group),
            (self.resource, info.resource),
            (self.subresource, info.subresource),
            (self.namespace, info.namespace),
            (self.name, info.name),
            (self.user, user),
        )
        return all(want is None or want == got for want, got in checks)


@dataclass(slots=True)
class Fault:
    status: int
    count: int
    match: Match
    retry_after: int | None = None
    hits: int = 0


@dataclass
class RequestLog:
    """Thread-safe request log plus the fault rules consulted before serving."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _records: list[RequestRecord] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self, match: Match | None = None) -> list[RequestRecord]:
        with self._lock:
            snapshot = list(self._records)
        return [r for r in snapshot if match is None or match(r.info, r.user)]

    def count(
        self, match: Match | None = None, *, injected: bool | None = None, noop: bool | None = None
    ) -> int:
        return sum(
            1
            for r in self.records(match)
            if (injected is None or r.injected == injected) and (noop is None or r.noop == noop)
        )

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.records())

    def inject(
        self, status: int, count: int, match: Match | None = None, retry_after: int | None = None
    ) -> Fault:
        fault = Fault(status, count, match or Match(), retry_after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take_fault(self, info: RequestInfo, user: str) -> Fault | None:
        """The first live fault matching this request, its count consumed."""
        with self._lock:
            for fault in self._faults:
                if fault.hits < fault.count and fault.match(info, user):
                    fault.hits += 1
                    return fault
            return None

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()


def stamp() -> tuple[float, float]:
    return time.time(), time.monotonic()
