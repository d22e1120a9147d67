"""Tier 3: `devicefabric logs` end to end: `up --demo`, a real agent, a real process's output.

The output of a process lives on its device (the agent's ring buffer); `logs` asks the bridge,
which asks the device over MQTT (`logs/request` -> `logs/reply`). Shown: `--tail 100` gives the
last 100 lines in order, `-f` prints new lines as they come, a name that does not exist and a
device that is offline each give one clear line and exit 1, without a hang.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from devicefabric.cli.demo import DEMO_DEVICES
from tests.support.cli import (
    Background,
    cli_argv,
    demo_agent_pids,
    manifest_text,
    run_cli,
    start_up,
    write_manifest,
)

PRINTER = (
    "import time\n"
    "for n in range(1, 301):\n"
    "    print('line', n, flush=True)\n"
    "n = 300\n"
    "while True:\n"
    "    n += 1\n"
    "    print('line', n, flush=True)\n"
    "    time.sleep(0.2)\n"
)


def numbers(out: str) -> list[int]:
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith("line ")]


def test_logs_tail_follow_and_the_errors(tmp_path: Path, procs: list[Background]) -> None:
    up, state = start_up(tmp_path, procs, "--demo")
    http = up.argv[up.argv.index("--http") + 1]
    device = DEMO_DEVICES[0]
    manifest = write_manifest(
        tmp_path / "printer.yaml",
        manifest_text("printer", device, [sys.executable, "-c", PRINTER.replace("\n", "\\n")]),
    )
    assert run_cli("apply", "-f", str(manifest), "--state-dir", str(state)).code == 0

    def tail() -> list[int]:
        result = run_cli("logs", "printer", "--tail", "100", "--http", http)
        got = numbers(result.out) if result.code == 0 else []
        return got if len(got) == 100 and got[-1] > 300 else []

    last = up.wait_for(tail, 20, "`logs --tail 100` with the printer's last 100 lines")
    assert last == list(range(last[0], last[0] + 100)), "the last 100 lines, in order"

    # -f: new lines arrive while it runs (the printer adds one every 0.2 s)
    follower = Background(
        "follower", cli_argv("logs", "-f", "printer", "--tail", "1", "--http", http), tmp_path
    )
    procs.append(follower)
    started = time.monotonic()
    follower.wait_for(lambda: len(numbers(follower.out)) >= 4, 5, "four lines followed")
    took = time.monotonic() - started
    seen = numbers(follower.out)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen), "a line was printed twice"
    assert took < 3.0, f"the follower took {took:.1f}s for 4 lines printed 0.2 s apart"
    follower.stop()

    # errors: one line, exit 1, no hang
    missing = run_cli("logs", "nope", "--http", http)
    assert (missing.code, missing.err.strip()) == (
        1,
        "devicefabric: deviceprocess default/nope not found",
    )
    agents = demo_agent_pids(up.err)
    devices = [line for line in up.err.splitlines() if "demo agent started" in line]
    index = next(i for i, line in enumerate(devices) if f'"device": "{device}"' in line)
    os.kill(agents[index], signal.SIGKILL)

    def offline() -> str:
        result = run_cli("logs", "printer", "--http", http)
        return result.err if result.code == 1 and "is not connected" in result.err else ""

    line = up.wait_for(offline, 15, "`logs` saying the device is offline").strip()
    assert line.startswith(f"devicefabric: device {device} is not connected (ConnectionLost)")
    assert up.ctrl_c() == 0
