"""A Kubernetes API server fake that speaks real HTTP on loopback, for the real client and kubectl.

`FakeApiServer` runs `http.server.ThreadingHTTPServer` (HTTP/1.1, keep-alive, one thread per
connection) in a background thread, serving our CRDs (every document of `crd.yaml` read from
package data, or the list given: DeviceProcess, Device, DeviceProcessSet) and the built-in kinds the
bridge uses (`kinds.py`); `handler.py` does the HTTP. Cluster-scoped kinds (Device) live at URLs
without `/namespaces/{ns}/`; deleting an object garbage-collects its dependents (`store.py`). Discovery (`/version`,
`/api`, `/apis`, group and group-version documents) is enough for kubectl; `/openapi/*` answers
404, so kubectl runs with `--validate=false`. Tables are served for kubectl's `as=Table` requests
with the CRD's printer columns (`tables.py`).

Test controls: `log` (the request log, `faults.py`), `inject(...)` (answer the next N matching
requests with an error), `drop_watches()`, `compact()`, `active_watches()`, `store` (direct,
unlogged access), `write_kubeconfig(...)`, `namespaces` and `errors` (tracebacks of handler
failures, which the tests' fixture asserts empty); `custom` (the DeviceProcess type), `customs`
(every served CRD's type) and `kind(name)` (a served type by kind) for direct store access.

Namespaces: by default every namespace exists, so tests need not create them. Set `namespaces` to
the set that exists and a create anywhere else is refused as by the real NamespaceLifecycle
admission plugin: 404 NotFound, `namespaces "x" not found`, details `{"name":"x","kind":
"namespaces"}`. Reads, updates and deletes there find nothing, as on a real server: 404 naming the
resource (`leases.coordination.k8s.io "name" not found`).

Invariants: `stop()` ends every watch and closes every connection, then joins the server thread.
Users are the bearer tokens' text (`write_kubeconfig(user=...)`), so the log says who asked.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import yaml

from devicefabric.config.deploybundle import CRD, read
from devicefabric.config.resource import KIND
from tests.support.fakeapi.faults import Match, RequestInfo, RequestLog
from tests.support.fakeapi.handler import ApiHTTPServer, Handler
from tests.support.fakeapi.kinds import BUILT_IN, ResourceType, from_crd
from tests.support.fakeapi.kubeconfig import write_kubeconfig
from tests.support.fakeapi.store import ApiError, Store


class FakeApiServer:
    """The fake API server: `with FakeApiServer() as api:` serves on `api.url` until exit."""

    def __init__(
        self,
        crds: Sequence[Mapping[str, Any]] | None = None,
        *,
        bookmark_interval: float = 0.5,
        history_limit: int = 10_000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if crds is None:
            crds = [doc for doc in yaml.safe_load_all(read(CRD)) if doc]
        self.customs = tuple(from_crd(crd) for crd in crds)
        if not self.customs:
            raise ValueError("the fake serves at least one CRD")
        self.custom = next((t for t in self.customs if t.kind == KIND), self.customs[0])
        """The DeviceProcess type (or the first CRD given without one)."""
        self.types: tuple[ResourceType, ...] = (*self.customs, *BUILT_IN)
        served = [(t.group, t.version, t.plural) for t in self.types]
        if len(set(served)) != len(served):
            raise ValueError(f"a resource is served twice: {served}")
        self.store = Store(history_limit)
        self.log = RequestLog()
        self.bookmark_interval = bookmark_interval
        self.stopping = False
        self.errors: list[str] = []  # tracebacks of handler failures (a fixture asserts none)
        self.namespaces: set[str] | None = None  # None: every namespace exists (see module doc)
        self._host = host
        self._http = ApiHTTPServer((host, port), Handler)
        self._http.fake = self
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def resource_type(self, info: RequestInfo) -> ResourceType:
        for rtype in self.types:
            if (rtype.group, rtype.version, rtype.plural) == (
                info.api_group,
                info.api_version,
                info.resource,
            ):
                return rtype
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def kind(self, kind: str) -> ResourceType:
        """The served type of `kind` ("Device", "DeviceProcessSet", "Lease", ...)."""
        for rtype in self.types:
            if rtype.kind == kind and rtype.group != "":
                return rtype
        raise KeyError(kind)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fakeapi",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.store.drop_watches("clean")
        self._http.shutdown()
        self._http.server_close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------------
    def inject(
        self, status: int, count: int = 1, *, retry_after: int | None = None, **match: str
    ) -> None:
        """Answer the next `count` requests matching `match` (Match fields) with `status`."""
        self.log.inject(status, count, Match(**match), retry_after)

    def drop_watches(self, how: Literal["abrupt", "clean"] = "abrupt") -> int:
        return self.store.drop_watches(how)

    def compact(self) -> int:
        return self.store.compact()

    def active_watches(self, resource: str | None = None) -> int:
        return sum(1 for w in self.store.watchers() if resource in (None, w.rtype.plural))

    def write_kubeconfig(
        self, path: Path, *, user: str = "admin", namespace: str = "default"
    ) -> Path:
        return write_kubeconfig(path, self.url, user=user, namespace=namespace)
