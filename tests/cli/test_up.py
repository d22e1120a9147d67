"""`devicefabric up` end to end: real processes, real broker, real agent, real files.

The story a user follows: start `up`, copy the printed lines to give a device its password and
start its agent, `apply` a DeviceProcess, see it `Running` / Connected / Synced in `get`, `delete`
it and watch the process stop, then Ctrl-C `up`. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.cli.verbs import condition_status
from tests.support.cli import (
    SHUTDOWN_BOUND,
    Background,
    cli_argv,
    manifest_text,
    run_cli,
    sh,
    start_up,
    write_manifest,
)
from tests.support.ports import free_port
from tests.support.procfs import alive


def printed(up: Background, prefix: str) -> list[str]:
    (line,) = [ln.strip() for ln in up.out.splitlines() if ln.strip().startswith(prefix)]
    return shlex.split(line)


def watch_as_printed(up: Background, cwd: Path, state: Path) -> None:
    """The printed watch lines, run by `sh` as printed: a login file, no password in argv."""
    creds = printed(up, "devicefabric creds observer")
    watch = printed(up, "XDG_CONFIG_HOME=")
    assert creds[-2:] == ["--mosquitto-options", str(state / "observer")]
    assert watch[0] == f"XDG_CONFIG_HOME={state / 'observer'}"
    assert watch[1] == "mosquitto_sub"
    assert watch[watch.index("-I") + 1] == "observer_"
    assert watch[watch.index("-t") + 1] == "fabric/v1/#"
    assert "-P" not in watch
    assert "-u" not in watch
    here = f"{shlex.quote(sys.executable)} -m devicefabric"
    line = shlex.join(creds).replace("devicefabric", here, 1)
    made = subprocess.run(["sh", "-c", line], cwd=cwd, capture_output=True, text=True, check=False)
    assert (made.returncode, made.stdout) == (0, ""), made.stderr
    if shutil.which("mosquitto_sub") is None:
        return  # the shape above is all that can be checked (test_observer_login needs it)
    watched = sh(shlex.join(watch) + " -C 1 -W 10", cwd)
    assert watched.code == 0, watched.err
    assert watched.out.startswith("fabric/v1/")


def test_apply_runs_on_the_agent_get_shows_it_delete_stops_it(
    tmp_path: Path, procs: list[Background]
) -> None:
    up, state = start_up(tmp_path, procs)
    assert stat.S_IMODE((state / "secret").stat().st_mode) == 0o600

    # The printed lines work as printed (with `devicefabric` run from this interpreter).
    creds = printed(up, "devicefabric creds device")
    assert creds[-2] == ">"
    password = run_cli(*creds[1:-2])
    assert password.code == 0
    (tmp_path / creds[-1]).write_text(password.out)
    agent_argv = printed(up, "devicefabric agent run")
    device = agent_argv[agent_argv.index("--device") + 1]
    procs.append(Background("agent", cli_argv(*agent_argv[1:]), tmp_path))
    watch_as_printed(up, tmp_path, state)

    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    path = write_manifest(tmp_path / "p.yaml", manifest_text("sleeper", device, sleeper))
    applied = run_cli("apply", "-f", str(path), "--state-dir", str(state))
    assert applied.out == "deviceprocess/sleeper created\n"

    store = LocalStore(state)

    def running_pid() -> int | None:
        res = store.load("default/sleeper")
        if res is None or res.status.get("phase") != "Running":
            return None
        if (condition_status(res, "AgentConnected"), condition_status(res, "Synced")) != (
            "True",
            "True",
        ):
            return None
        pid = res.status.get("pid")
        return pid if isinstance(pid, int) else None

    pid = up.wait_for(running_pid, timeout=20, what="sleeper Running, Connected, Synced")
    assert pid is not None
    assert "time.sleep(600)" in Path(f"/proc/{pid}/cmdline").read_text()

    table = run_cli("get", "--state-dir", str(state)).out.splitlines()
    assert table[0].split() == ["NAME", "DEVICE", "PHASE", "CONNECTED", "RESTARTS", "AGE"]
    assert table[1].split()[:5] == ["sleeper", device, "Running", "True", "0"]
    wide = run_cli("get", "sleeper", "-o", "json", "--state-dir", str(state))
    assert json.loads(wide.out)["status"]["observedGeneration"] == 1

    deleted = run_cli("delete", "sleeper", "--state-dir", str(state))
    assert deleted.out == "deviceprocess/sleeper deleted\n"
    up.wait_for(lambda: not alive(pid), timeout=10, what="the process to stop after delete")

    started = time.monotonic()
    assert up.stop(signal.SIGINT, timeout=SHUTDOWN_BOUND) == 0
    assert time.monotonic() - started < SHUTDOWN_BOUND


@pytest.mark.parametrize("flag", ["--mqtt", "--http"])
def test_a_port_in_use_is_one_line_naming_the_flag(tmp_path: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        other = "--http" if flag == "--mqtt" else "--mqtt"
        result = run_cli(
            "up",
            "--state-dir",
            str(tmp_path / "state"),
            flag,
            busy,
            other,
            f"127.0.0.1:{free_port()}",
        )
    assert result.code == 2
    (line,) = result.err.splitlines()
    assert line.startswith(f"devicefabric: error: {flag}: {busy} is already in use")
    assert line.endswith(flag)  # says what to change


def test_an_unusable_state_dir_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("up", "--state-dir", str(blocker / "state"))
    assert result.code == 2
    (line,) = result.err.splitlines()
    assert line.startswith("devicefabric: error: --state-dir: cannot use ")
