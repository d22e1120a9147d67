"""Scenario 6 at the command line: every entry point that takes a device name refuses a bad one.

What a user sees is checked on the real console script (`python -m devicefabric ...`): exit code
2, exactly one line on stderr that names the problem, and no side effect (no password printed, no
state directory or config written, no resource stored). The names are the impostor's: `+`, `#`,
`/`, uppercase, 300 characters, a reserved role, empty, a leading dash, a trailing newline.

The commands of one test run concurrently (each is a separate short-lived process), so the whole
matrix costs about as much as its slowest few processes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from tests.support.cli import CLI_TIMEOUT, Result, cli_argv, manifest_text, write_manifest

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


def run_all(commands: Sequence[Sequence[str]], cwd: Path) -> list[Result]:
    """Run `devicefabric` command lines concurrently; return their results in order."""
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


def assert_refused(result: Result, what: str) -> None:
    """Exit 2, one line on stderr naming the problem, nothing on stdout."""
    assert result.code == 2, (what, result)
    lines = result.err.splitlines()
    assert len(lines) == 1, (what, result.err)
    assert lines[0].startswith("devicefabric: error: "), (what, lines[0])
    assert result.out == "", (what, result.out)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path


def test_creds_device_refuses_bad_names(tmp_path: Path, secret_file: Path) -> None:
    results = run_all(
        [["creds", "device", "--secret-file", str(secret_file), "--", n] for n in BAD_NAMES],
        tmp_path,
    )
    for name, result in zip(BAD_NAMES, results, strict=True):
        assert_refused(result, name)
        assert "device name" in result.err, result.err
    # The same command with a valid name prints a password: the refusals are about the names.
    (good,) = run_all([["creds", "device", "--secret-file", str(secret_file), "dev-a"]], tmp_path)
    assert good.code == 0
    assert len(good.out.strip()) == 43


def test_agent_run_refuses_bad_device_names(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("not-used\n", encoding="utf-8")
    flags = ["--broker", NOWHERE, "--password-file", str(password)]
    states = [tmp_path / f"state-{i}" for i in range(len(BAD_NAMES))]
    results = run_all(
        [
            ["agent", "run", f"--device={name}", *flags, "--state-dir", str(state)]
            for name, state in zip(BAD_NAMES, states, strict=True)
        ],
        tmp_path,
    )
    for name, result, state in zip(BAD_NAMES, results, states, strict=True):
        assert_refused(result, name)
        assert "device name" in result.err, result.err
        assert not state.exists(), f"{name!r}: the agent wrote its state directory"


def test_mosquitto_config_refuses_a_devices_file_with_a_bad_name(
    tmp_path: Path, secret_file: Path
) -> None:
    hostile = [n for n in BAD_NAMES if n.strip() and "\n" not in n and "#" not in n]
    commands, outs = [], []
    for i, name in enumerate(hostile):
        devices = tmp_path / f"devices-{i}"
        devices.write_text(f"dev-a\n{name}\ndev-b\n", encoding="utf-8")
        outs.append(tmp_path / f"out-{i}")
        commands.append(
            [
                "broker",
                "mosquitto-config",
                "--out",
                str(outs[-1]),
                "--devices",
                str(devices),
                "--secret-file",
                str(secret_file),
            ]
        )
    for name, result, out in zip(hostile, run_all(commands, tmp_path), outs, strict=True):
        assert_refused(result, name)
        assert ":2: invalid device name" in result.err, result.err  # the file's line 2
        assert not out.exists(), f"{name!r}: config written for a bad device list"


def test_apply_refuses_a_resource_for_a_bad_device(tmp_path: Path) -> None:
    hostile = ["BAD/NAME", "+", "Dev-A", "d" * 300, BRIDGE_USER, "-dev"]
    commands, states = [], []
    for i, name in enumerate(hostile):
        device = f'"{name}"'
        manifest = write_manifest(tmp_path / f"proc-{i}.yaml", manifest_text("p", device, ["true"]))
        states.append(tmp_path / f"state-{i}")
        commands.append(["apply", "-f", str(manifest), "--state-dir", str(states[-1])])
    for name, result, state in zip(hostile, run_all(commands, tmp_path), states, strict=True):
        assert_refused(result, name)
        assert "deviceName" in result.err, result.err
        assert not any(state.rglob("*.yaml")), f"{name!r}: a resource was stored"
