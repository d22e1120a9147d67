"""The embedded broker's listener: accepts one connection at a time, under a connection cap.

asyncio's `start_server` accepts up to 100 sockets per wake-up and closes a refused one only
a few loop iterations later (its transport, protocol and task run first), so a burst of idle
connections could exhaust the process's descriptors even with a cap in the handler: the broker
logged EMFILE for every accept and any file the program opened meanwhile (the bridge's journal
in `devicefabric up`) failed. `GatedListener` instead:

- accepts one socket per iteration (`loop.sock_accept`); while `max_connections` connections
  are open, each newly accepted socket is closed at once, before anything else runs, so at
  most one descriptor above the cap is ever held;
- on EMFILE/ENFILE/ENOBUFS from accept (descriptors taken by something else) waits with
  back-off (up to 1 s) and reports it through `on_refusal` instead of spinning;
- serves each accepted socket in its own task: TLS handshake (bounded), then `serve(reader,
  writer)`, where the stream buffers at most about 2 x `read_limit` bytes of unread input.

It quacks like the `asyncio.Server` amqtt keeps (`close()`, `wait_closed()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

log = logging.getLogger("devicefabric.broker")

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_MAX_BACKOFF: Final = 1.0


class GatedListener:
    """Accept loop with a connection cap (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        serve: Serve,
        *,
        max_connections: int,
        context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        read_limit: int = 16 * 1024,
        on_refusal: Callable[[str, str], None] | None = None,
    ) -> None:
        self._sock = sock
        self._serve = serve
        self._max = max_connections
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._read_limit = read_limit
        self._on_refusal = on_refusal or _ignore
        self._open: set[asyncio.Task[None]] = set()
        self._sock.settimeout(0)  # non-blocking, as `sock_accept` requires
        self._accepting = asyncio.create_task(self._accept_loop(), name="broker-accept")

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.01
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                self._on_refusal("accept_failed", exc.strerror or str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.01
            if len(self._open) >= self._max:
                conn.close()  # now, before any other descriptor can be taken
                self._on_refusal("connection_limit", _peer(peer))
                continue
            task = asyncio.create_task(self._connection(conn), name=f"mqtt-{_peer(peer)}")
            self._open.add(task)
            task.add_done_callback(self._open.discard)

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._read_limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._context,
                ssl_handshake_timeout=self._handshake_timeout if self._context else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.debug("connection setup failed: %s", exc)
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await self._serve(reader, writer)
        finally:
            transport.abort()

    def close(self) -> None:
        self._accepting.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _ignore(reason: str, detail: str) -> None:
    del reason, detail
