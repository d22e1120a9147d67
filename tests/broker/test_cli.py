"""`devicefabric broker run` as a user runs it: a process, a ready line, signals, exit codes.

The module's broker is one `python -m devicefabric broker run` process on a free port; the
`mosquitto_sub` test is the "Must show" of the issue, done as a new user would: the password
comes from `devicefabric creds observer`, the watcher is the real `mosquitto_sub`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from devicefabric.config.credentials import password_for
from devicefabric.config.topics import Topics
from tests.support.packets import connect_packet, publish_packet
from tests.support.requires import require_tool

T = Topics()
READY_TIMEOUT: Final = 20.0
EXIT_TIMEOUT: Final = 10.0


def _env() -> dict[str, str]:
    """The test's environment without any DEVICEFABRIC_* setting that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}


def _devicefabric(*args: str, timeout: float = EXIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devicefabric", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


@dataclass
class RunningBroker:
    process: subprocess.Popen[str]
    port: int
    secret: bytes
    secret_file: Path


def _read_ready_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    stdout = process.stdout
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT)
    if not line or not line[0]:
        process.kill()
        _, err = process.communicate(timeout=EXIT_TIMEOUT)
        raise AssertionError(f"broker printed no ready line; stderr:\n{err[-2000:]}")
    return line[0].strip()


def _start(secret_file: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "devicefabric", "--log-format", "json", "broker", "run"),
            *("--mqtt", "127.0.0.1:0", "--secret-file", str(secret_file), *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    return process, _read_ready_line(process)


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.communicate()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    secret = b"cli-secret-0123456789abcdef"
    secret_file = tmp_path_factory.mktemp("cli") / "secret"
    secret_file.write_bytes(secret + b"\n")
    process, ready = _start(secret_file)
    try:
        assert ready.startswith("broker listening on mqtt://127.0.0.1:")
        port = int(ready.rsplit(":", 1)[1])
        yield RunningBroker(process, port, secret, secret_file)
    finally:
        _stop(process)


def test_run_prints_a_ready_line_and_accepts_devices(running: RunningBroker) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(connect_packet("tor9-99", "tor9-99", password_for(running.secret, "tor9-99")))
        assert sock.recv(4) == b"\x20\x02\x00\x00"


@pytest.mark.mosquitto
def test_mosquitto_sub_as_observer_prints_retained_device_status(running: RunningBroker) -> None:
    mosquitto_sub = require_tool("mosquitto_sub", "install mosquitto-clients")
    status = b'{"state":"online","session":"s1","heartbeat_s":15,"agent":"0.1.0"}'
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as device:
        device.sendall(
            connect_packet("tor9-99", "tor9-99", password_for(running.secret, "tor9-99"))
        )
        assert device.recv(4) == b"\x20\x02\x00\x00"
        device.sendall(bytes([0x31]) + publish_packet(T.status("tor9-99"), status)[1:])  # retain
        device.sendall(b"\xe0\x00")
    creds = _devicefabric("creds", "--secret-file", str(running.secret_file), "observer")
    assert creds.returncode == 0, creds.stderr
    watched = subprocess.run(
        [
            *(mosquitto_sub, "-h", "127.0.0.1", "-p", str(running.port)),
            *("-u", "observer", "-I", "observer_", "-P", creds.stdout.strip()),
            *("-t", "fabric/v1/#", "-v"),
            *("-C", "1", "-W", "10"),
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip() == f"{T.status('tor9-99')} {status.decode()}"


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("another-secret-0123456789\n")
    process, _ = _start(secret_file)
    assert _stop(process) == 0


def test_an_address_in_use_is_exit_2_with_one_line_naming_the_flag(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("another-secret-0123456789\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _devicefabric(
            "broker", "run", "--mqtt", f"127.0.0.1:{port}", "--secret-file", str(secret_file)
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--mqtt" in lines[0]
    assert "in use" in lines[0]


def test_no_secret_is_exit_2(tmp_path: Path) -> None:
    result = _devicefabric("broker", "run", "--mqtt", "127.0.0.1:0")
    assert result.returncode == 2
    assert "secret" in result.stderr


def test_help_lists_the_broker_commands() -> None:
    result = _devicefabric("broker", "--help")
    assert result.returncode == 0
    assert "run" in result.stdout
    assert "mosquitto-config" in result.stdout
