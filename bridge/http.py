"""A tiny HTTP/1.1 server for `/healthz`, `/readyz`, `/metrics` and `/devices`.

`asyncio.start_server` with a minimal handler: one request per connection (`Connection: close`),
`GET` and `HEAD` only, the request line and headers read under a timeout and a size limit, at
most `MAX_CONNECTIONS` at once (more are closed unread). Routes
are callables taking the query parameters and returning a `Response` (or an awaitable of one, for a
document built off the event loop), so the service decides what is served and this module knows
nothing about the bridge.

`HttpServer.start()` binds before anything else starts: a port in use is a `ConfigError` that names
`--http` (the CLI prints it on one line and exits 2). Port 0 picks a free port (`port` tells which).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import HostPort

log = logging.getLogger("devicefabric.bridge.http")

READ_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 64  # concurrent requests; more are closed unread (probes need a few)
MAX_HEADER_BYTES: Final = 16 * 1024
REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    504: "Gateway Timeout",
    503: "Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Stream:
    """A 200 whose body is written as it comes (no Content-Length; it ends when the connection
    closes): `logs -f`. Each chunk's write is bounded by the read timeout, so a client that stops
    reading is dropped."""

    chunks: AsyncIterator[bytes]
    content_type: str = "text/plain; charset=utf-8"


Query = Mapping[str, str]
Route = Callable[[Query], Response | Awaitable[Response]]
PrefixRoute = Callable[[str, Query], Awaitable[Response | Stream]]


class HttpServer:
    """Serves `routes` (path -> handler) on `address`; see the module doc."""

    def __init__(
        self,
        address: HostPort,
        routes: Mapping[str, Route],
        flag: str = "--http",
        prefixes: Mapping[str, PrefixRoute] | None = None,
    ) -> None:
        """`prefixes`: `"/logs/"` -> a handler of the rest of the path (and the query)."""
        self.address = address
        self.routes = dict(routes)
        self.prefixes = dict(prefixes or {})
        self.flag = flag
        self._server: asyncio.Server | None = None
        self._active = 0

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self.address.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind the listener (idempotent)."""
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._handle, self.address.host, self.address.port, limit=MAX_HEADER_BYTES
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{self.flag}: {self.address} is already in use; choose another with {self.flag}"
                ) from None
            raise ConfigError(
                f"{self.flag}: cannot listen on {self.address}: {exc.strerror}"
            ) from None
        log.info(
            "serving /healthz /readyz /metrics /devices on http://%s:%d",
            self.address.host,
            self.port,
        )

    async def serve(self) -> None:
        """Serve until cancelled (after `start`), then close the listener."""
        if self._server is None:
            await self.start()
        assert self._server is not None  # noqa: S101 - set by start()
        try:
            await self._server.serve_forever()
        finally:
            self._server.close()
            self._server = None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS:  # a flood must not take the process's descriptors
            writer.transport.abort()
            return
        self._active += 1
        try:
            await self._serve_one(reader, writer)
        finally:
            self._active -= 1

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            response = await self._respond(method, path)
            if isinstance(response, Stream):
                await _stream(writer, response)
                return
            writer.write(_encode(response, include_body=method != "HEAD"))
            async with asyncio.timeout(READ_TIMEOUT):
                await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        except ValueError:
            writer.write(_encode(Response(400, b"bad request\n", "text/plain")))
        finally:
            writer.close()

    async def _respond(self, method: str, path: str) -> Response | Stream:
        if method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n", "text/plain")
        route_path, _, query = path.partition("?")
        route = self.routes.get(route_path)
        prefix = next((p for p in self.prefixes if route_path.startswith(p)), None)
        if route is None and prefix is None:
            return Response(404, b"not found\n", "text/plain")
        try:
            if route is None:
                assert prefix is not None  # noqa: S101 - one of the two was found
                rest = route_path.removeprefix(prefix)
                return await self.prefixes[prefix](rest, dict(parse_qsl(query)))
            answer = route(dict(parse_qsl(query)))
            return await answer if inspect.isawaitable(answer) else answer
        except ValueError as exc:  # a bad query parameter: the handler says which
            return Response(400, f"{exc}\n".encode(), "text/plain")
        except Exception:
            log.exception("HTTP handler for %s failed", path)
            return Response(500, b"internal error\n", "text/plain")


async def _stream(writer: asyncio.StreamWriter, response: Stream) -> None:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {response.content_type}\r\n"
        "Connection: close\r\nCache-Control: no-cache\r\n\r\n"
    ).encode("latin-1")
    writer.write(head)
    async with contextlib.aclosing(response.chunks) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            writer.write(chunk)
            async with asyncio.timeout(READ_TIMEOUT):
                await writer.drain()


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line {line[:100]!r}")
    return parts[0], parts[1]


def _encode(response: Response, include_body: bool = True) -> bytes:
    reason = REASONS.get(response.status, "Error")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + response.body if include_body else head
