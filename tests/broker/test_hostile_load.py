"""`devicefabric broker run` under hostile load: descriptor exhaustion, pre-auth memory, stalls.

The broker runs as a real subprocess (its RSS is its own, read from /proc), the attackers are raw
sockets that never finish a CONNECT or never read, and a legitimate client must keep working.
The figures quoted in the closing report come from the `print`ed lines (run with `-s`).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from devicefabric.config.topics import Topics
from tests.support.brokers import BrokerProcess, prepare_embedded, running
from tests.support.mqtt import Client, connect
from tests.support.packets import connect_packet, publish_packet, subscribe_packet
from tests.support.ports import closed_by_peer
from tests.support.procfs import rss_kib
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SECRET: Final = b"hostile-load-secret-0123456789"
T: Final = Topics()
FD_LIMIT: Final = 256


def _rss_mb(pid: int | None) -> float:
    assert pid is not None
    return rss_kib(pid) / 1024


@contextlib.contextmanager
def _sockets(count: int, port: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """`broker run` started with a soft and hard descriptor limit of FD_LIMIT."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * FD_LIMIT:
        pytest.skip(f"needs a descriptor hard limit of {4 * FD_LIMIT}")
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not installed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * FD_LIMIT), hard))
    broker = prepare_embedded(tmp_path, SECRET)
    broker.argv = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", *broker.argv]
    try:
        with running(broker):
            yield broker
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_pre_auth_connections_cannot_exhaust_descriptors_or_memory(
    limited_broker: BrokerProcess,
) -> None:
    broker = limited_broker
    # 3 x the descriptor limit of idle connections that never send a CONNECT: those past the
    # cap are closed at once (not after the CONNECT timeout), the broker keeps descriptors.
    with _sockets(3 * FD_LIMIT, broker.port) as idle:
        closed = wait_for(
            lambda: sum(closed_by_peer(s) for s in idle) >= 2 * FD_LIMIT or None,
            timeout=10,
            what="the connections past the cap to be closed",
        )
        assert closed
        assert broker.running
    assert "connection refused: too many connections" in broker.log_text()

    # Unfinished CONNECTs announcing 100 KB: refused at the header, nothing is buffered.
    start_rss = _rss_mb(broker.pid)
    partial = b"\x10" + bytes([0xA0, 0x8D, 0x06]) + b"\x00" * 60_000  # 100,000-byte CONNECT
    count = 150
    with _sockets(count, broker.port) as attackers:
        for sock in attackers:
            with contextlib.suppress(OSError):
                sock.sendall(partial)
        wait_for(lambda: all(closed_by_peer(s) for s in attackers), timeout=10, what="refused")
        peak_rss = _rss_mb(broker.pid)
    print(f"\nRSS with {count} unfinished 100 KB CONNECTs: {start_rss:.1f} -> {peak_rss:.1f} MB")
    assert peak_rss - start_rss < 8

    # Afterwards a legitimate device still connects and is heard.
    with connect(broker, "legit-a") as device, connect(broker, "observer") as watcher:
        assert not watcher.subscribe(T.status("legit-a")).is_failure
        assert device.publish(T.status("legit-a"), b"here")
        watcher.inbox.wait_for(T.status("legit-a"), lambda m: m.payload == b"here")
    assert broker.running


def _stalled(
    port: int, password: str, client_id: str, user: str, topic_filter: str
) -> socket.socket:
    """A raw client that subscribes and then never reads its socket (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.sendall(connect_packet(client_id, user, password, keepalive=0))
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    sock.sendall(subscribe_packet(topic_filter, qos=1))
    assert sock.recv(5)[0] == 0x90
    return sock


def _talk(talker: Client, watcher: Client, count: int, payload: bytes) -> None:
    """`count` QoS 1 reports from `talker`, all delivered to `watcher`."""
    topic = T.report(talker.client_id)
    seen = len(watcher.inbox.messages(topic))
    infos = [talker.paho.publish(topic, payload, qos=1) for _ in range(count)]
    wait_for(lambda: all(i.is_published() for i in infos), timeout=60, what="reports acked")
    watcher.inbox.wait_count(seen + count, topic, timeout=60)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with running(prepare_embedded(tmp_path, SECRET)) as process:
        yield process


def test_one_stalled_subscriber_does_not_grow_memory_with_everyones_traffic(
    broker: BrokerProcess,
) -> None:
    stalled = _stalled(
        broker.port, broker.password("stall-a"), "stall-a", "stall-a", T.status("stall-a")
    )
    with stalled:
        for _ in range(300):  # its own deliveries back up: the broker cannot write to it
            stalled.sendall(publish_packet(T.status("stall-a"), b"s" * 8192))
        with connect(broker, "talk-a") as talker, connect(broker, "observer") as watcher:
            assert not watcher.subscribe(T.report("talk-a")).is_failure
            _talk(talker, watcher, 200, b"w" * 8192)  # warm up allocator and buffers
            before = _rss_mb(broker.pid)
            _talk(talker, watcher, 3000, b"r" * 8192)  # healthy traffic keeps flowing
            after = _rss_mb(broker.pid)
    print(
        f"\nRSS while one client stalls, 3000 x 8 KB healthy messages: {before:.1f} -> {after:.1f} MB"
    )
    assert after - before < 10  # stock amqtt kept every delivery since the stall: ~+25 MB


def test_a_stalled_qos1_subscriber_is_disconnected_past_its_outgoing_bound(
    broker: BrokerProcess,
) -> None:
    stalled = _stalled(
        broker.port, broker.password("observer"), "observer_stalled", "observer", T.everything()
    )
    with stalled, connect(broker, "talk-b") as talker, connect(broker, "observer") as watcher:
        assert not watcher.subscribe(T.report("talk-b")).is_failure
        _talk(talker, watcher, 3500, b"r" * 8192)  # 28 MB: past the 16 MiB outgoing bound
        wait_for(lambda: closed_by_peer(stalled), timeout=10, what="the stalled client dropped")
        _talk(talker, watcher, 10, b"after")  # and delivery to the others goes on
    assert "client disconnected: its outgoing queue is full" in broker.log_text()
