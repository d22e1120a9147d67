"""The fake's HTTP side: one handler thread per connection, routing, verbs and watch streams.

`Handler` parses each request into Kubernetes request attributes, consults the injected faults,
serves discovery, the verbs (from the `Store`) or a watch, and logs the request with its status
code (a patch or update that changed nothing is logged as a no-op). Errors are `Status` objects
with the API server's reasons and causes.

Watches stream `{"type","object"}` JSON lines in chunked encoding: the backlog first (history
after `resourceVersion`, or synthetic ADDED events without one), then live events. With
`allowWatchBookmarks=true` a BOOKMARK carrying the current revision is sent every
`bookmark_interval` when the revision moved; the bookmark's revision is read under the store lock
with the watcher's queue empty, so no event at or below it can still be pending. A watch from a
compacted revision gets one `ERROR` event with a 410 `Expired` Status and the stream ends, as from
the real watch cache. `timeoutSeconds` ends the stream cleanly; an abrupt drop cuts the TCP
connection mid-stream.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.support.fakeapi import discovery, selectors, tables
from tests.support.fakeapi.faults import RequestInfo, RequestRecord, parse_request, stamp
from tests.support.fakeapi.kinds import ResourceType
from tests.support.fakeapi.patching import PatchError
from tests.support.fakeapi.store import ApiError, Propagation, Watcher

if TYPE_CHECKING:
    from tests.support.fakeapi.server import FakeApiServer


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up is normal; anything else is a bug in the fake, kept for tests."""
        del request, client_address
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            self.fake.errors.append(traceback.format_exc())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Like a real (Go) API server: no Nagle wait for a delayed ACK on small responses (~40 ms).
    disable_nagle_algorithm = True
    server: ApiHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        del format, args

    def setup(self) -> None:
        super().setup()
        self.server.fake.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.fake.track(self.connection, add=False)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- plumbing ----------------------------------------------------------------------------
    def _send_json(
        self, code: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _handle(self) -> None:
        fake = self.server.fake
        info = parse_request(self.command, self.path)
        auth = self.headers.get("Authorization", "")
        user = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else "anonymous"
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        wall, mono = stamp()

        def log(code: int, injected: bool = False, noop: bool = False) -> None:
            sent = body if info.verb in ("create", "update", "patch", "delete") else b""
            record = RequestRecord(info, user, code, wall, mono, content_type, injected, noop, sent)
            fake.log.record(record)

        fault = fake.log.take_fault(info, user)
        if fault is not None:
            reason = {409: "Conflict", 429: "TooManyRequests", 404: "NotFound"}.get(
                fault.status, "InternalError"
            )
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            log(fault.status, injected=True)
            self._send_json(
                fault.status, status_body(fault.status, reason, "injected fault"), headers
            )
            return
        try:
            if not info.is_resource:
                code, doc = discovery.document(fake, info)
                log(code)
                self._send_json(code, doc)
                return
            rtype = fake.resource_type(info)
            _check_scope(rtype, info)
            if info.verb == "watch":
                self._watch(rtype, info, log)
                return
            before = self._current_rv(rtype, info)
            code, result = self._serve(rtype, info, body, content_type)
        except ApiError as exc:
            details = exc.details | (
                {
                    "causes": [
                        {"reason": c.reason, "message": c.message, "field": c.field}
                        for c in exc.causes
                    ]
                }
                if exc.causes
                else {}
            )
            log(exc.code)
            self._send_json(exc.code, status_body(exc.code, exc.reason, exc.message, **details))
            return
        noop = before is not None and result.get("metadata", {}).get("resourceVersion") == before
        log(code, noop=noop)
        self._send_json(code, result)

    def _current_rv(self, rtype: ResourceType, info: RequestInfo) -> str | None:
        """The stored resourceVersion before a patch or update (to log no-op writes)."""
        if info.verb not in ("patch", "update") or not info.name:
            return None
        try:
            obj = self.server.fake.store.get(rtype, info.namespace or "", info.name)
        except ApiError:
            return None
        return str(obj["metadata"]["resourceVersion"])

    # -- verbs -------------------------------------------------------------------------------
    def _serve(
        self, rtype: ResourceType, info: RequestInfo, body: bytes, content_type: str
    ) -> tuple[int, dict[str, Any]]:
        store = self.server.fake.store
        namespace = info.namespace or ""
        if info.verb == "list":
            return 200, self._list(rtype, info)
        name = info.name or ""
        if info.verb == "get":
            obj = store.get(rtype, namespace, name)
            if info.subresource not in (None, "status") or (
                info.subresource and not rtype.status_subresource
            ):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return 200, tables.maybe_table(rtype, [obj], self.headers.get("Accept", "")) or obj
        if info.verb == "delete":
            precondition, propagation = _delete_options(body, info.param("propagationPolicy"))
            return 200, store.delete(rtype, namespace, name, precondition, propagation)
        if info.verb == "patch":
            try:
                patched = store.patch(
                    rtype,
                    namespace,
                    name,
                    body,
                    content_type=content_type,
                    subresource=info.subresource,
                )
            except PatchError as exc:
                raise ApiError(exc.status, exc.reason, exc.message) from None
            return 200, patched
        return self._replace(rtype, info, body)

    def _replace(
        self, rtype: ResourceType, info: RequestInfo, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """POST and PUT: the body is a whole object."""
        store = self.server.fake.store
        namespace, name = info.namespace or "", info.name or ""
        try:
            decoded = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"error decoding body: {exc}") from None
        if not isinstance(decoded, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        if decoded.get("kind", rtype.kind) != rtype.kind:
            raise ApiError(
                400, "BadRequest", f"kind {decoded.get('kind')!r} does not match {rtype.kind}"
            )
        if info.verb == "create" and info.subresource is None:
            existing = self.server.fake.namespaces
            if rtype.namespaced and existing is not None and namespace not in existing:
                raise ApiError(  # the NamespaceLifecycle admission plugin's answer
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    details={"name": namespace, "kind": "namespaces"},
                )
            return 201, store.create(rtype, namespace, decoded)
        if info.verb == "update":
            if (decoded.get("metadata") or {}).get("name") != name:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the name of the object does not match the name on the URL ({name!r})",
                )
            return 200, store.update(rtype, namespace, name, decoded, info.subresource)
        raise ApiError(
            405, "MethodNotAllowed", f"{info.verb} is not supported on {rtype.group_resource}"
        )

    def _list(self, rtype: ResourceType, info: RequestInfo) -> dict[str, Any]:
        accept = selectors.compile_selectors(
            info.param("labelSelector"), info.param("fieldSelector")
        )
        items, rv = self.server.fake.store.list_objects(rtype, info.namespace)
        items = [o for o in items if accept(o)]
        page, token = selectors.paginate(items, rv, info.param("limit"), info.param("continue"))
        table = tables.maybe_table(rtype, page, self.headers.get("Accept", ""))
        if table is not None:
            table["metadata"] = {"resourceVersion": str(rv)}
            return table
        meta: dict[str, Any] = {"resourceVersion": str(token.rv if token else rv)}
        if token and token.next:
            meta["continue"] = token.next
        return {
            "apiVersion": rtype.api_version,
            "kind": f"{rtype.kind}List",
            "metadata": meta,
            "items": page,
        }

    def _watch(self, rtype: ResourceType, info: RequestInfo, log: Any) -> None:
        fake = self.server.fake
        accept = selectors.compile_selectors(
            info.param("labelSelector"), info.param("fieldSelector")
        )
        timeout = float(info.param("timeoutSeconds") or 1800)
        bookmarks = info.param("allowWatchBookmarks") in ("true", "1")
        since = info.param("resourceVersion")
        expired: ApiError | None = None
        try:
            watcher, backlog = fake.store.watch(rtype, info.namespace, since, accept)
        except ApiError as exc:
            if exc.code != 410:
                raise
            expired, watcher, backlog = exc, None, []
        log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if expired is not None:
                self._chunk(_line("ERROR", status_body(410, "Expired", expired.message)))
                self._chunk(b"")
                return
            assert watcher is not None
            self._stream(fake, watcher, backlog, time.monotonic() + timeout, bookmarks)
        except OSError:
            self.close_connection = True
        finally:
            if watcher is not None:
                fake.store.unwatch(watcher)

    def _stream(
        self,
        fake: FakeApiServer,
        watcher: Watcher,
        backlog: list[Any],
        deadline: float,
        bookmarks: bool,
    ) -> None:
        last_rv = 0
        for event in backlog:
            self._chunk(_line(event.type, event.object))
            last_rv = max(last_rv, event.rv)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or fake.stopping:
                self._chunk(b"")
                return
            try:
                event = watcher.queue.get(timeout=min(remaining, fake.bookmark_interval))
            except queue.Empty:
                if bookmarks:
                    with fake.store.lock:
                        rv = fake.store.resource_version if watcher.queue.empty() else 0
                    if rv > last_rv:
                        self._chunk(
                            _line(
                                "BOOKMARK",
                                {
                                    "kind": watcher.rtype.kind,
                                    "apiVersion": watcher.rtype.api_version,
                                    "metadata": {"resourceVersion": str(rv)},
                                },
                            )
                        )
                        last_rv = rv
                continue
            if event is None:
                if watcher.dropped == "abrupt":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if watcher.dropped == "clean" or fake.stopping:
                    self._chunk(b"")
                    return
                continue
            self._chunk(_line(event.type, event.object))
            last_rv = event.rv


def _check_scope(rtype: ResourceType, info: RequestInfo) -> None:
    """A namespaced kind is addressed by name only inside a namespace (lists and watches may span
    every namespace); a cluster-scoped kind never has `/namespaces/{ns}/` in its URL."""
    if rtype.namespaced:
        misplaced = info.namespace is None and info.verb not in ("list", "watch")
    else:
        misplaced = info.namespace is not None
    if misplaced:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")


def _delete_options(body: bytes, query_policy: str | None) -> tuple[str | None, Propagation]:
    """`preconditions.resourceVersion` and the propagation policy of a delete (DeleteOptions body
    or `?propagationPolicy=`; `orphanDependents: true` is the old spelling of Orphan)."""
    try:
        options = json.loads(body) if body else {}
    except ValueError:
        raise ApiError(400, "BadRequest", "the DeleteOptions body is not JSON") from None
    options = options if isinstance(options, dict) else {}
    preconditions = options.get("preconditions")
    rv = preconditions.get("resourceVersion") if isinstance(preconditions, dict) else None
    policy = options.get("propagationPolicy") or query_policy
    if policy is None and options.get("orphanDependents") is True:
        policy = "Orphan"
    policies: dict[Any, Propagation] = {
        None: "Background",
        "Background": "Background",
        "Foreground": "Foreground",
        "Orphan": "Orphan",
    }
    if policy not in policies:
        raise ApiError(
            422,
            "Invalid",
            f'propagationPolicy: Unsupported value: "{policy}": supported values: '
            '"Foreground", "Background", "Orphan"',
        )
    return (str(rv) if rv is not None else None), policies[policy]


def _line(etype: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": etype, "object": obj}).encode() + b"\n"
