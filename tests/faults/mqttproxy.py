"""A TCP proxy that duplicates and reorders MQTT PUBLISH packets on their way to the broker.

Why not `tc netem`: the machines this suite runs on have no `sch_netem`, and duplication or
reordering of IP packets never reaches MQTT anyway (TCP delivers each connection's bytes once
and in order). What does reach MQTT is a PUBLISH delivered twice (a QoS 1 resend, DUP set) and
messages of one client arriving in another order (a resend after a reconnect). This proxy makes
exactly that, for real, between one client and the broker:

- every PUBLISH the client sends is forwarded twice, the copy with the DUP flag (QoS > 0);
- two PUBLISH packets in a row are swapped: the first is held until the second has gone (or
  `hold` seconds passed); any other packet first releases what is held, so CONNECT, SUBSCRIBE,
  PINGREQ and the acknowledgements keep their order.

The broker -> client direction is copied untouched. One event loop in a daemon thread serves
every connection; `close()` stops it. Packets are framed by the fixed header only (type, flags,
remaining length): nothing else of MQTT is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final

from tests.support.ports import free_port

PUBLISH: Final = 3
DUP: Final = 0x08
QOS_BITS: Final = 0x06


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT packet (fixed header included); IncompleteReadError at EOF."""
    first = await reader.readexactly(1)
    length, multiplier, header = 0, 1, bytearray(first)
    while True:
        byte = (await reader.readexactly(1))[0]
        header.append(byte)
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            break
        multiplier *= 128
        if multiplier > 128**3:
            raise ValueError("malformed remaining length")
    return bytes(header) + await reader.readexactly(length)


def _dup(packet: bytes) -> bytes:
    if packet[0] & QOS_BITS:
        return bytes([packet[0] | DUP]) + packet[1:]
    return packet


class MqttProxy:
    """Listens on `127.0.0.1:port`; forwards to `upstream` with the faults of the module doc."""

    def __init__(self, upstream_host: str, upstream_port: int, *, hold: float = 0.2) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.hold = hold
        self.port = free_port()
        self.duplicated = 0
        self.swapped = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name="mqtt-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5.0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for handler in self._handlers:  # every connection closed before the loop ends
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        writers = [c_writer]
        tasks: list[asyncio.Task[None]] = []
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            writers.append(u_writer)
            tasks = [
                asyncio.create_task(self._upstream(c_reader, u_writer)),
                asyncio.create_task(self._copy(u_reader, c_writer)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()
            self._handlers.discard(handler)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: bytes | None = None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            while True:
                try:
                    async with asyncio.timeout(self.hold if held is not None else None):
                        packet = await _read_packet(reader)
                except TimeoutError:
                    writer.write(held or b"")
                    held = None
                    await writer.drain()
                    continue
                if packet[0] >> 4 != PUBLISH:
                    if held is not None:
                        writer.write(held)
                        held = None
                    writer.write(packet)
                elif held is None:
                    held = packet + _dup(packet)
                    self.duplicated += 1
                else:
                    writer.write(packet + _dup(packet) + held)  # the later one first
                    self.duplicated += 1
                    self.swapped += 1
                    held = None
                await writer.drain()
