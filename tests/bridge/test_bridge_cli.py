"""Tier 2: `devicefabric bridge run` as a user runs it: flags, exit codes, clean shutdown."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.support.brokers import BrokerProcess
from tests.support.cli import Background, cli_argv, run_cli
from tests.support.mqtt import connect
from tests.support.ports import free_port
from tests.support.waiting import wait_for


def bridge_args(broker_url: str, password_file: Path, state: Path, http: str) -> list[str]:
    return [
        "--log-format",
        "json",
        "bridge",
        "run",
        "--broker",
        broker_url,
        "--password-file",
        str(password_file),
        "--control-plane",
        "local",
        "--state-dir",
        str(state),
        "--http",
        http,
    ]


def test_http_port_in_use_is_a_one_line_error_naming_the_flag(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("x" * 43 + "\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = f"mqtt://127.0.0.1:{free_port()}"
        result = run_cli(*bridge_args(broker, password, tmp_path / "s", f"127.0.0.1:{port}"))
    assert result.code == 2
    (line,) = [ln for ln in result.err.splitlines() if "error" in ln]
    assert "--http" in line
    assert "in use" in line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--broker", "http://x"], "--broker"),
        (["--http", "nope"], "--http"),
        (["--write-qps", "0"], "--write-qps"),
        (["--shards", "3"], "--shards 3: the local control plane has no Leases"),
    ],
)
def test_bad_flags_exit_2(tmp_path: Path, args: list[str], flag: str) -> None:
    password = tmp_path / "pw"
    password.write_text("secret\n")
    base = ["bridge", "run", "--password-file", str(password), "--control-plane", "local"]
    result = run_cli(*base, "--state-dir", str(tmp_path / "s"), *args)
    assert result.code == 2
    assert flag in result.err


def test_missing_password_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("bridge", "run", "--control-plane", "local", "--state-dir", str(tmp_path))
    assert result.code == 2
    assert "--password-file" in result.err


def test_refused_login_exits_1(mosquitto: BrokerProcess, tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("wrong-password\n")
    result = run_cli(
        *bridge_args(mosquitto.url, password, tmp_path / "s", f"127.0.0.1:{free_port()}")
    )
    assert result.code == 1
    assert "--password-file" in result.err


def test_runs_serves_and_says_offline_on_sigterm(mosquitto: BrokerProcess, tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    watcher = connect(mosquitto, "observer")
    watcher.subscribe(mosquitto.topics.bridge_status())
    args = bridge_args(mosquitto.url, mosquitto.password_file("bridge"), tmp_path / "s", http)
    bridge = Background("bridge", cli_argv(*args), tmp_path)
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://{http}/readyz", timeout=1) as resp:
                    return bool(json.load(resp)["ready"])
            except OSError:
                return not bridge.alive()

        wait_for(ready, timeout=20, what="/readyz")
        assert bridge.alive(), bridge.err
        online = watcher.inbox.wait_for(
            mosquitto.topics.bridge_status(), lambda m: m.json()["state"] == "online"
        ).json()
        assert bridge.stop(signal.SIGTERM, timeout=10) == 0
        offline = watcher.inbox.wait_for(
            mosquitto.topics.bridge_status(), lambda m: m.json()["state"] == "offline"
        ).json()
        assert offline["session"] == online["session"]
    finally:
        bridge.stop()
        watcher.close()
