"""`devicefabric up` under a low descriptor limit survives thousands of pre-auth connections.

`up` runs with `ulimit -n 256` (soft and hard, so raising it at start changes nothing); three
times that many TCP connections that never send a CONNECT are opened. The broker closes those
past its connection cap at once, so the process keeps descriptors for the bridge and its
journal, stays alive, and a legitimate device connects afterwards.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import socket
from pathlib import Path
from typing import Final

import pytest

from devicefabric.config.credentials import password_for, read_secret_file
from tests.support.cli import UP_START_TIMEOUT, Background, cli_argv
from tests.support.packets import connect_packet
from tests.support.ports import closed_by_peer, free_port
from tests.support.waiting import wait_for

FD_LIMIT: Final = 256


def test_up_stays_alive_after_three_times_its_fd_limit_of_idle_connections(
    tmp_path: Path, procs: list[Background]
) -> None:
    prlimit = shutil.which("prlimit")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if prlimit is None or (hard != resource.RLIM_INFINITY and hard < 4 * FD_LIMIT):
        pytest.skip("needs prlimit and a descriptor hard limit of 1024")
    port, state = free_port(), tmp_path / "state"
    argv = cli_argv(
        *("--log-format", "json", "up", "--state-dir", str(state)),
        *("--mqtt", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{free_port()}"),
    )
    up = Background("up", [prlimit, f"--nofile={FD_LIMIT}:{FD_LIMIT}", *argv], tmp_path)
    procs.append(up)
    up.wait_for(lambda: "mosquitto_sub" in up.out or not up.alive(), UP_START_TIMEOUT, "`up`")
    assert up.alive(), up.err

    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * FD_LIMIT), hard))
    socks: list[socket.socket] = []
    try:
        for _ in range(3 * FD_LIMIT):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
        wait_for(
            lambda: sum(closed_by_peer(s) for s in socks) >= 2 * FD_LIMIT,
            timeout=10,
            what="connections past the cap closed",
        )
        assert up.alive(), up.err[-2000:]
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    secret = read_secret_file(state / "secret")
    connack = b""

    def device_connects() -> bool:
        nonlocal connack
        with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as s:
            s.sendall(connect_packet("edge-9", "edge-9", password_for(secret, "edge-9")))
            with contextlib.suppress(OSError):
                connack = s.recv(4)
        return connack == b"\x20\x02\x00\x00"

    wait_for(device_connects, timeout=15, what="a legitimate device to connect")
    assert up.alive(), up.err[-2000:]
    assert "Too many open files" not in up.err  # the cap kept descriptors for the program
