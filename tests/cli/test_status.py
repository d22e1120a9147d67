"""`devicefabric status`: the fabric on one screen, and exit codes a probe can rely on.

The codes are pinned on documents (the pure `assess`), then lived through for real: `up --demo`
started by the test (0: all up), one demo agent killed (4: a device down), `up` stopped (1: the
bridge does not answer).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devicefabric.cli.status import (
    EXIT_BRIDGE_DOWN,
    EXIT_DEVICES_DOWN,
    EXIT_NOT_READY,
    EXIT_OK,
    Observed,
    assess,
    parse_metrics,
)
from tests.support.cli import (
    SHUTDOWN_BOUND,
    Background,
    demo_agent_pids,
    last_table,
    run_cli,
    start_up,
)
from tests.support.ports import free_port

READY = {"ready": True, "mqtt": "primed", "session": "s1", "controlPlaneSynced": True}
UP = {"device": "d1", "state": "connected", "reason": "Connected", "processes": {}}
DOWN = {"device": "d2", "state": "disconnected", "reason": "ConnectionLost", "processes": {}}


@pytest.mark.parametrize(
    ("readyz", "devices", "code"),
    [
        (READY, [], EXIT_OK),
        (READY, [UP], EXIT_OK),
        (READY, [UP, DOWN], EXIT_DEVICES_DOWN),
        ({**READY, "ready": False, "mqtt": "down"}, [UP], EXIT_NOT_READY),
        ({**READY, "ready": False, "controlPlaneSynced": False}, [], EXIT_NOT_READY),
        (None, None, EXIT_BRIDGE_DOWN),
    ],
)
def test_exit_code_by_state(
    readyz: dict[str, object] | None, devices: list[dict[str, object]] | None, code: int
) -> None:
    seen = Observed("127.0.0.1:1", healthz=readyz is not None, readyz=readyz, devices=devices)
    report = assess(seen)
    assert report.code == code
    assert report.lines[-1].endswith(f"(exit {code})") or code == EXIT_BRIDGE_DOWN


def test_phases_come_from_reports_without_a_control_plane() -> None:
    running = {"phase": "Running"}
    device = {**UP, "processes": {"default/a": running, "default/b": {"phase": "Failed"}}}
    report = assess(Observed("h:1", healthz=True, readyz=READY, devices=[device]))
    assert "resources  2: 1 Running, 1 Failed   (from the device reports)" in report.lines


def test_metrics_are_read_by_name_and_labels() -> None:
    text = (
        "# HELP x\n"
        'devicefabric_controlplane_writes_total{kind="status"} 7.0\n'
        "devicefabric_queue_depth 0.0\n"
        "python_gc_objects_collected_total 3.0\n"
    )
    assert parse_metrics(text) == {
        'devicefabric_controlplane_writes_total{kind="status"}': 7.0,
        "devicefabric_queue_depth": 0.0,
    }


def test_status_is_0_when_up_4_when_a_device_is_down_1_when_stopped(
    tmp_path: Path, procs: list[Background]
) -> None:
    up, state = start_up(tmp_path, procs, "--demo")
    http = up.argv[up.argv.index("--http") + 1]

    def status() -> tuple[int, str]:
        result = run_cli("status", "--http", http, "--state-dir", str(state))
        return result.code, result.out

    def settled() -> bool:
        phases = {name: row[2] for name, row in last_table(up.out).items()}
        return phases.get("one-shot") == "Succeeded" and status()[0] == EXIT_OK

    up.wait_for(settled, timeout=25, what="status exit 0 with the demo settled")
    code, out = status()
    assert "devices    3/3 connected" in out
    assert "broker     reachable (bridge link: primed)" in out
    assert "  ready    role leader" in out
    assert "(from the control plane)" in out
    assert "last transitions" in out

    # The one-shot's agent has nothing left running: killing it leaves no process behind.
    pids = demo_agent_pids(up.err)
    devices = [json.loads(ln)["device"] for ln in up.err.splitlines() if "demo agent started" in ln]
    os.kill(pids[devices.index("demo-3")], signal.SIGKILL)

    def degraded() -> str:
        code, out = status()
        return out if code == EXIT_DEVICES_DOWN else ""

    out = up.wait_for(degraded, timeout=15, what="status exit 4 after an agent died")
    assert "devices    2/3 connected" in out
    assert "  demo-3: disconnected (ConnectionLost)" in out
    assert out.rstrip().endswith("status     DEGRADED (exit 4)")

    assert up.ctrl_c(timeout=SHUTDOWN_BOUND) == 0
    code, out = status()
    assert code == EXIT_BRIDGE_DOWN
    assert f"bridge     http://{http}\n  DOWN     not answering" in out


def test_status_reads_its_flags_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DEVICEFABRIC_HTTP": f"127.0.0.1:{port}"}
    proc = subprocess.run(
        [sys.executable, "-m", "devicefabric", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == EXIT_BRIDGE_DOWN
    assert proc.stdout.startswith(f"bridge     http://127.0.0.1:{port}\n")


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_timeout_that_is_not_positive_is_a_usage_error(value: str) -> None:
    result = run_cli("status", "--timeout", value, "--http", "127.0.0.1:9")
    assert result.code == 2
    assert result.err.startswith("devicefabric: error: --timeout: expected a number of seconds > 0")
