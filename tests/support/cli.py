"""Running the real `devicefabric` CLI as a subprocess (`python -m devicefabric ...`).

`run_cli` runs a short command to completion (with a deadline) and returns what a user sees:
exit code, stdout, stderr (`run` any argv, `sh` a shell line). `Background` runs a long-lived one
(`up`, `agent run`) with its output in files, and stops it with a signal and a bound. `start_up`
starts `devicefabric up`; `last_table` and `demo_agent_pids` read what it printed.
`manifest_text`/`write_manifest` write DeviceProcess YAML for a test to apply;
`mosquitto_config_args` is the argv of `broker mosquitto-config` as an operator types it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from tests.support.ports import free_port
from tests.support.waiting import ConditionTimeoutError, wait_for

T = TypeVar("T")

CLI_TIMEOUT: Final = 20.0
SHUTDOWN_BOUND: Final = 10.0  # s: SIGINT to exit of `up` (agents stopped, offline recorded)
UP_START_TIMEOUT: Final = 20.0


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "devicefabric", *args]


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = CLI_TIMEOUT,
) -> Result:
    """Run `argv` to completion (within `timeout`); what a user sees, whatever the exit code."""
    where: dict[str, Any] = {"cwd": cwd, "env": env, "input": stdin, "timeout": timeout}
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **where)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_cli(*args: str, stdin: str | None = None, timeout: float = CLI_TIMEOUT) -> Result:
    return run(cli_argv(*args), stdin=stdin, timeout=timeout)


def sh(command: str, cwd: Path, timeout: float = CLI_TIMEOUT) -> Result:
    """A shell command line, as a user pastes one, run in `cwd`."""
    return run(["sh", "-c", command], cwd=cwd, timeout=timeout)


def mosquitto_config_args(out: Path, devices: Path, secret_file: Path) -> list[str]:
    """`broker mosquitto-config` writing into `out` for the devices file and the secret file."""
    return [
        "broker",
        "mosquitto-config",
        "--out",
        str(out),
        "--devices",
        str(devices),
        "--secret-file",
        str(secret_file),
    ]


def manifest_text(
    name: str,
    device: str,
    command: list[str],
    *,
    namespace: str | None = None,
    extra: str = "",
) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    items = ", ".join(f'"{part}"' for part in command)
    return (
        "apiVersion: devicefabric.io/v1alpha1\n"
        "kind: DeviceProcess\n"
        f"metadata:\n  name: {name}{ns}\n"
        f"spec:\n  deviceName: {device}\n  command: [{items}]\n{extra}"
    )


def write_manifest(path: Path, *docs: str) -> Path:
    path.write_text("---\n".join(docs), encoding="utf-8")
    return path


class Background:
    """A long-running CLI subprocess (`up`, `agent run`) with its output in files.

    `stop()` sends SIGINT (or the given signal), waits up to `timeout` and returns the exit code;
    a process that does not stop is killed (and the test fails on the returned code). Always call
    `stop()` in teardown (the fixtures below do).
    """

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            # Its own process group, like a job a shell starts: `ctrl_c()` signals the group.
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=workdir, process_group=0)

    @property
    def out(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """`waiting.wait_for`, failing with the tail of this process's output and log."""
        try:
            return wait_for(predicate, timeout=timeout, what=what)
        except ConditionTimeoutError as exc:
            raise ConditionTimeoutError(
                f"{exc}\n--- {self.name} stdout (tail) ---\n{self.out[-2000:]}"
                f"\n--- {self.name} stderr (tail) ---\n{self.err[-4000:]}"
            ) from None

    def ctrl_c(self, timeout: float = 15.0) -> int | None:
        """What a terminal's Ctrl-C does: SIGINT to the whole process group; then wait."""
        return self.stop(signal.SIGINT, timeout, group=True)

    def stop(
        self, sig: signal.Signals = signal.SIGINT, timeout: float = 15.0, *, group: bool = False
    ) -> int | None:
        """Signal (the process, or its group) and wait; None when it had to be killed."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def up_args(state: Path, *extra: str) -> list[str]:
    """`up` with its state in `state`, on free loopback ports."""
    mqtt, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    return ["up", "--state-dir", str(state), "--mqtt", mqtt, "--http", http, *extra]


def start_up(tmp_path: Path, procs: list[Background], *extra: str) -> tuple[Background, Path]:
    """`devicefabric up` on free loopback ports, once it printed its instructions."""
    state = tmp_path / "state"
    up = Background("up", cli_argv("--log-format", "json", *up_args(state, *extra)), tmp_path)
    procs.append(up)
    up.wait_for(
        lambda: "mosquitto_sub" in up.out or not up.alive(),
        timeout=UP_START_TIMEOUT,
        what="`up` to print its instructions",
    )
    assert up.alive(), up.err
    return up, state


def last_table(out: str) -> dict[str, list[str]]:
    """NAME -> row of the last DeviceProcess table `up --demo` printed (not the sets' table)."""
    tables = [
        block
        for block in out.split("\n\n")
        if block.startswith("NAME ") and block.split()[1] == "DEVICE"
    ]
    if not tables:
        return {}
    return {row.split()[0]: row.split() for row in tables[-1].splitlines()[1:]}


def demo_agent_pids(err: str) -> list[int]:
    pids = []
    for line in err.splitlines():
        if line.startswith("{") and (m := re.search(r"demo agent started \(pid (\d+)\)", line)):
            pids.append(int(m.group(1)))
            assert json.loads(line)["device"].startswith("demo-")
    return pids
