"""The one seam between the bridge's event loop and the official, blocking `kubernetes` client.

Why the official client in threads rather than `kubernetes_asyncio`: the official client is the
one the `bridge` extra already installs and the one maintained with the API server; it loads
kubeconfig and in-cluster configuration (token rotation, exec plugins) for us. Its blocking calls
are few here (list, watch, status patch, event create, lease get/create/update), so running each
in a small dedicated thread pool costs nothing and never blocks the loop. `kubernetes_asyncio`
would add a second HTTP stack, and its dict patches go out as JSON-patch unless `_content_type`
is passed, the kind of silent default this module avoids: every request here names its method,
path, body and content type explicitly, through the client's generic `call_api`, and answers
plain JSON dicts (no generated models, whose MicroTime serialization drops the fraction when the
microseconds are zero, which the API server rejects).

Errors are mapped at this edge (`map_status`, `map_exception`): 409 `ConflictError`, 404
`NotFoundError` (with the Status' `details.kind`), 410 `ExpiredError` (the informer re-lists), 429 and 5xx and connection failures
`TransientError` with `Retry-After` in seconds, anything else `ControlPlaneError`. urllib3's own
retries are off, so every failure surfaces to the work queue's back-off and is counted.

A watch is an async iterator over decoded events whose reads run in the pool; closing it shuts
the socket down, so a read blocked in a thread returns at once and cancellation is prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import functools
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import urllib3

from devicefabric.bridge.errors import (
    ConflictError,
    ControlPlaneError,
    NotFoundError,
    TransientError,
)
from devicefabric.config.errors import ConfigError

log = logging.getLogger("devicefabric.bridge.kube")
T = TypeVar("T")

MERGE_PATCH: Final = "application/merge-patch+json"
JSON: Final = "application/json"
POOL_THREADS: Final = 12  # writers (4 by default) + three watches + lease, with room to spare
_kube: Any = kubernetes  # the client's annotations are partial: treat it as Any at this edge


def micro_time() -> str:
    """Now as a Kubernetes MicroTime: RFC 3339, UTC, exactly six fractional digits."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ExpiredError(ControlPlaneError):
    """410 Gone / Expired: the resourceVersion is too old; list again."""


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def map_status(
    status: int, message: str, headers: Mapping[str, str] | None, kind: str | None = None
) -> ControlPlaneError:
    """The bridge error for an HTTP error status (`kind`: the Status' `details.kind`)."""
    if status == 409:
        return ConflictError(message)
    if status == 404:
        return NotFoundError(message, kind)
    if status == 410:
        return ExpiredError(message)
    if status == 429 or status >= 500 or status == 0:
        retry = retry_after_seconds((headers or {}).get("Retry-After"))
        return TransientError(message, retry_after=retry)
    return ControlPlaneError(message)


def map_exception(exc: BaseException, what: str) -> ControlPlaneError:
    """The bridge error for a client-side failure (connection, timeout, protocol)."""
    if isinstance(exc, _kube.client.ApiException):
        return map_status(int(exc.status or 0), f"{what}: {exc.status} {exc.reason}", exc.headers)
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")


def _status(what: str, status: int, data: bytes) -> tuple[str, str | None]:
    """The one-line message of an error answer, and its Status' `details.kind` if any."""
    kind = None
    try:
        doc = json.loads(data)
        text = str(doc.get("message", ""))
        details = doc.get("details")
        if isinstance(details, dict) and isinstance(details.get("kind"), str):
            kind = details["kind"]
    except (ValueError, AttributeError):
        text = data[:200].decode("utf-8", "replace")
    return (f"{what}: HTTP {status}: {text}" if text else f"{what}: HTTP {status}"), kind


class WatchStream:
    """One open watch response; `next_event` blocks (run it in the pool), `close` unblocks it."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lines: Iterator[str] = _kube.watch.watch.iter_resp_lines(response)
        self._closed = False

    def next_event(self) -> dict[str, Any] | None:
        """The next decoded event, None at a clean end; a cut stream is a `TransientError`."""
        try:
            for line in self._lines:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    return event
        except Exception as exc:
            if self._closed:
                return None
            raise map_exception(exc, "watch stream") from exc
        return None

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._response.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread
        with contextlib.suppress(Exception):
            self._response.close()


class KubeClient:
    """Blocking requests as JSON dicts, and their async wrappers running in a private pool."""

    def __init__(self, api_client: Any, request_timeout: float) -> None:
        self._api = api_client
        self._timeout = request_timeout
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="kube")

    @classmethod
    def from_environment(cls, request_timeout: float) -> KubeClient:
        """In-cluster configuration inside a pod, else `KUBECONFIG` (or ~/.kube/config)."""
        configuration = _kube.client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                _kube.config.load_incluster_config(client_configuration=configuration)
            else:
                # Read KUBECONFIG now: the client reads it once, when it is first imported.
                _kube.config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None,
                    client_configuration=configuration,
                )
        except (_kube.config.ConfigException, OSError, ValueError) as exc:
            raise ConfigError(
                f"--control-plane kube: no in-cluster configuration and no usable kubeconfig "
                f"(set KUBECONFIG): {exc}"
            ) from None
        configuration.retries = False  # failures reach the work queue's back-off, counted
        return cls(_kube.client.ApiClient(configuration), request_timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._api.close()

    # -- blocking ------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        body: object,
        content_type: str,
        read_timeout: float,
    ) -> Any:
        what = f"{method} {path}"
        try:
            serialized = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params={"Accept": JSON, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                *serialized, _request_timeout=(self._timeout, read_timeout)
            )
        except (_kube.client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise map_exception(exc, what) from exc
        if response.status >= 400:
            message, kind = _status(what, response.status, response.read())
            raise map_status(response.status, message, response.headers, kind)
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer."""
        response = self._send(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            read_timeout=self._timeout,
        )
        try:
            decoded: dict[str, Any] = json.loads(response.read())
        except (ValueError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise map_exception(exc, f"{method} {path}") from exc
        return decoded

    def open_watch(
        self, path: str, query: Sequence[tuple[str, str]], server_timeout: float
    ) -> WatchStream:
        """Start a watch (`watch=true` is added); reads time out a little after the server's."""
        response = self._send(
            "GET",
            path,
            query=[*query, ("watch", "true")],
            body=None,
            content_type=JSON,
            read_timeout=server_timeout + 15,
        )
        return WatchStream(response.response)

    # -- async ---------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in the pool (the seam: nothing else leaves the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return await self.run(self.request, method, path, **kwargs)

    async def watch(
        self, path: str, query: Sequence[tuple[str, str]], server_timeout: float
    ) -> AsyncGenerator[dict[str, Any]]:
        """Decoded watch events until the stream ends; use with `contextlib.aclosing`."""
        stream = await self.run(self.open_watch, path, query, server_timeout)
        try:
            while True:
                event = await self.run(stream.next_event)
                if event is None:
                    return
                yield event
        finally:
            stream.close()
