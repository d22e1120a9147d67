"""Scenario 6 at the command line: every entry point that takes a device name refuses a bad one.

What a user sees: exit code 2, exactly one line on stderr that names the problem, and no side
effect (no password printed, no state directory or config written, no resource stored). The names
are the impostor's: `+`, `#`, `/`, uppercase, 300 characters, a reserved role, empty, a leading
dash, a trailing newline.

The name matrix calls the console script's function (`devicefabric.cli.main`, what the
`devicefabric` script runs) in-process: a fresh interpreter per case would cost a third of a second
each. One test then runs every command for real (`python -m devicefabric ...`, concurrently) to
show that the process itself exits 2 with the same line.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from devicefabric.cli import main
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from tests.support.cli import (
    CLI_TIMEOUT,
    Result,
    cli_argv,
    manifest_text,
    mosquitto_config_args,
    write_manifest,
)

pytestmark = pytest.mark.faults

SECRET: Final = "cli-impostor-secret-0123456789"
BAD_NAMES: Final = (
    "BAD/NAME",
    "+",
    "#",
    "dev-a/status",
    "Dev-A",
    "d" * 300,
    BRIDGE_USER,
    OBSERVER_USER,
    "",
    "-dev",
    "dev-a\n",
)
# An agent that got past validation would try to connect; nothing listens on port 1.
NOWHERE: Final = "mqtt://127.0.0.1:1"
NOISY_LOGGERS: Final = ("amqtt", "transitions", "kubernetes", "urllib3")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(capsys)


class CLI:
    """`main(argv)` in-process; the logging set-up it does is undone after each call."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> Result:
        root = logging.getLogger()
        saved = (root.handlers[:], root.level, [logging.getLogger(n).level for n in NOISY_LOGGERS])
        self.capsys.readouterr()
        try:
            code = main(["--log-format", "text", *args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        finally:
            root.handlers[:], root.level = saved[0], saved[1]
            for name, level in zip(NOISY_LOGGERS, saved[2], strict=True):
                logging.getLogger(name).setLevel(level)
        out, err = self.capsys.readouterr()
        return Result(code, out, err)


def assert_refused(result: Result, what: str, names: str) -> None:
    """Exit 2, one line on stderr naming the problem, nothing on stdout."""
    assert result.code == 2, (what, result)
    lines = result.err.splitlines()
    assert len(lines) == 1, (what, result.err)
    assert lines[0].startswith("devicefabric: error: "), (what, lines[0])
    assert names in lines[0], (what, lines[0])
    assert result.out == "", (what, result.out)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path


def creds_args(secret_file: Path, name: str) -> list[str]:
    return ["creds", "device", "--secret-file", str(secret_file), "--", name]


def agent_args(tmp_path: Path, name: str, state: Path) -> list[str]:
    password = tmp_path / "password"
    password.write_text("not-used\n", encoding="utf-8")
    return [
        "agent",
        "run",
        f"--device={name}",
        "--broker",
        NOWHERE,
        "--password-file",
        str(password),
        "--state-dir",
        str(state),
    ]


def mosquitto_args(secret_file: Path, devices: Path, out: Path) -> list[str]:
    return mosquitto_config_args(out, devices, secret_file)


def apply_args(tmp_path: Path, name: str, state: Path) -> list[str]:
    manifest = manifest_text("p", f'"{name}"', ["true"])
    path = write_manifest(state.with_name(f"{state.name}.yaml"), manifest)
    return ["apply", "-f", str(path), "--state-dir", str(state)]


def test_creds_device_refuses_bad_names(cli: CLI, secret_file: Path) -> None:
    for name in BAD_NAMES:
        assert_refused(cli(*creds_args(secret_file, name)), name, "invalid device name")
    # The same command with a valid name prints a password: the refusals are about the names.
    good = cli(*creds_args(secret_file, "dev-a"))
    assert good.code == 0
    assert len(good.out.strip()) == 43


def test_agent_run_refuses_bad_device_names(cli: CLI, tmp_path: Path) -> None:
    for i, name in enumerate(BAD_NAMES):
        state = tmp_path / f"state-{i}"
        assert_refused(cli(*agent_args(tmp_path, name, state)), name, "invalid device name")
        assert not state.exists(), f"{name!r}: the agent wrote its state directory"


def test_mosquitto_config_refuses_a_devices_file_with_a_bad_name(
    cli: CLI, tmp_path: Path, secret_file: Path
) -> None:
    # Blank lines, `#` comments and surrounding whitespace are the file format's own.
    hostile = [n for n in BAD_NAMES if n and n == n.strip() and "#" not in n]
    for i, name in enumerate(hostile):
        devices = tmp_path / f"devices-{i}"
        devices.write_text(f"dev-a\n{name}\ndev-b\n", encoding="utf-8")
        out = tmp_path / f"out-{i}"
        result = cli(*mosquitto_args(secret_file, devices, out))
        assert_refused(result, name, f"{devices}:2: invalid device name")
        assert not out.exists(), f"{name!r}: config written for a bad device list"


def test_apply_refuses_a_resource_for_a_bad_device(cli: CLI, tmp_path: Path) -> None:
    for i, name in enumerate(n for n in BAD_NAMES if n.strip()):
        state = tmp_path / f"state-{i}"
        assert_refused(cli(*apply_args(tmp_path, name, state)), name, "spec.deviceName")
        assert not any(state.rglob("*.yaml")), f"{name!r}: a resource was stored"


def run_all(commands: Sequence[Sequence[str]], cwd: Path) -> list[Result]:
    """Run `python -m devicefabric` command lines concurrently; their results in order."""
    procs = [
        subprocess.Popen(
            cli_argv(*args),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(Result(proc.returncode, out, err))
    return results


def test_the_console_script_exits_2_with_one_line(tmp_path: Path, secret_file: Path) -> None:
    name = "BAD/NAME"
    devices = tmp_path / "devices"
    devices.write_text(f"{name}\n", encoding="utf-8")
    commands = {  # command line -> what its one line of error says
        "creds": (creds_args(secret_file, name), f"invalid device name {name!r}"),
        "agent": (
            agent_args(tmp_path, name, tmp_path / "agent-state"),
            f"invalid device name {name!r}",
        ),
        "mosquitto-config": (
            mosquitto_args(secret_file, devices, tmp_path / "out"),
            f"invalid device name {name!r}",
        ),
        "apply": (apply_args(tmp_path, name, tmp_path / "apply-state"), "spec.deviceName"),
    }
    results = run_all([args for args, _ in commands.values()], tmp_path)
    for (what, (_, says)), result in zip(commands.items(), results, strict=True):
        assert_refused(result, what, says)
    assert not (tmp_path / "agent-state").exists()
    assert not (tmp_path / "out").exists()
