"""A paho client that reads its socket in large chunks: one `recv` per many packets.

paho-mqtt 2.x parses an incoming packet with one `recv` for its first byte, one per byte of the
remaining length, and one for the rest: three or more system calls for a 74-byte heartbeat. At
thousands of heartbeats a second the bridge spent most of its time there. `BufferedClient`
serves those small reads from a buffer filled by `recv(CHUNK)`, and paho's parser is unchanged.
A complete QoS 0 PUBLISH (every heartbeat) at the head of the buffer is handed to
`on_qos0_publish(topic, payload, retain)` as bytes, without paho's message object (which builds a
`threading.Condition` per message). Anything else (QoS 1/2 with its acknowledgement, MQTT 5, a
packet split across reads, a malformed one) goes through paho's own reader and `on_message`.

Invariants:
- Bytes already taken off the socket are not seen by the event loop's selector. So whoever drives
  the client must call `loop_read` again while `buffered()` is true, not only when the socket is
  readable (`mqtt.Channel` does). `buffered()` also counts bytes a TLS socket has already
  decrypted (`pending()`), for the same reason.
- The buffer belongs to one connection: it is emptied when paho closes the socket (and `Channel`
  uses a new client for each connection), so no byte of an old connection is ever parsed as part
  of a new one.
- End of stream and errors pass through unchanged: an empty buffer and an empty `recv` return
  b"" (paho: connection lost). `BlockingIOError`, TLS want-read/write and the rest are paho's own
  `_sock_recv` handling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

MQTTv311: Final = MQTTProtocolVersion.MQTTv311

CHUNK: Final = 64 * 1024
FAST_BATCH: Final = 256  # QoS 0 PUBLISHes delivered per `_packet_read` call at most


class BufferedClient(paho.Client):
    """`paho.Client` with buffered socket reads (see the module doc)."""

    _rbuf: bytes = b""
    _rpos: int = 0
    on_qos0_publish: Callable[[bytes, bytes, bool], None] | None = None

    def _packet_read(self) -> MQTTErrorCode:
        """Every complete QoS 0 PUBLISH at the head of the buffer is delivered straight from it
        (at most `FAST_BATCH` per call); whatever else comes first, a packet that is not all in
        the buffer yet, or a malformed one, goes through paho's reader."""
        deliver = self.on_qos0_publish
        if deliver is None or self._in_packet["command"] != 0 or self._protocol != MQTTv311:
            return super()._packet_read()
        if self._rpos >= len(self._rbuf):  # empty: fill it here, so the first packet is fast too
            try:
                data = super()._sock_recv(CHUNK)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return super()._packet_read()  # paho reads again, logs and reports the error
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._rbuf, self._rpos = data, 0
        buf = self._rbuf
        delivered = 0
        while delivered < FAST_BATCH:
            pos = self._rpos
            found = qos0_publish_at(buf, pos)
            if found is None:
                break
            topic_start, topic_end, end = found
            self._rpos = end
            delivered += 1
            deliver(buf[topic_start:topic_end], buf[topic_end:end], bool(buf[pos] & 0x01))
        if delivered:
            self._last_bytes_received = time.monotonic()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()

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


def qos0_publish_at(buf: bytes, pos: int) -> tuple[int, int, int] | None:
    """(topic start, topic end, packet end) of the MQTT 3.1.1 QoS 0 PUBLISH that starts at
    `buf[pos]`, or None when no QoS 0 PUBLISH starts there, it is not all in `buf`, or its
    lengths do not add up (paho's own reader then takes it, and reports a malformed packet)."""
    size = len(buf)
    if pos >= size or buf[pos] & 0xF6 != 0x30:  # PUBLISH with QoS 0 (dup and retain: any)
        return None
    length, mult, at = 0, 1, pos + 1
    while at < size and at <= pos + 4:  # the remaining length: 1 to 4 bytes
        byte = buf[at]
        at += 1
        length += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            break
    else:
        return None
    end = at + length
    if end > size or length < 2:
        return None
    topic_end = at + 2 + ((buf[at] << 8) | buf[at + 1])
    return None if topic_end > end else (at + 2, topic_end, end)
