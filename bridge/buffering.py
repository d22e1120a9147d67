"""A paho client that reads its socket in large chunks: one `recv` per many packets.

paho-mqtt 2.x parses an incoming packet with one `recv` for its first byte, one per byte of the
remaining length, and one for the rest: three or more system calls for a 74-byte heartbeat. At
thousands of heartbeats a second the bridge spent most of its time there. `BufferedClient`
serves those small reads from a buffer filled by `recv(CHUNK)`, and paho's parser is unchanged.

Invariants:
- Bytes already taken off the socket are not seen by the event loop's selector. So whoever drives
  the client must call `loop_read` again while `buffered()` is true, not only when the socket is
  readable (`MqttLink._readable` does). `buffered()` also counts bytes a TLS socket has already
  decrypted (`pending()`), for the same reason.
- The buffer belongs to one connection: it is emptied when paho closes the socket and before each
  new connection, so no byte of an old connection is ever parsed as part of a new one.
- End of stream and errors pass through unchanged: an empty buffer and an empty `recv` return
  b"" (paho: connection lost). `BlockingIOError`, TLS want-read/write and the rest are paho's own
  `_sock_recv` handling.
"""

from __future__ import annotations

from typing import Final

import paho.mqtt.client as paho

CHUNK: Final = 64 * 1024


class BufferedClient(paho.Client):
    """`paho.Client` with buffered socket reads (see the module doc)."""

    _rbuf: bytes = b""
    _rpos: int = 0

    def buffered(self) -> bool:
        """Bytes are waiting that the selector will not report: call `loop_read` again."""
        if self._rpos < len(self._rbuf):
            return True
        pending = getattr(self._sock, "pending", None)  # TLS: decrypted, not yet read
        return bool(pending()) if callable(pending) else False

    def forget_buffer(self) -> None:
        self._rbuf, self._rpos = b"", 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(CHUNK)  # raises BlockingIOError when nothing is there
            if not data:
                return data  # end of stream
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def _sock_close(self) -> None:
        self.forget_buffer()
        super()._sock_close()
