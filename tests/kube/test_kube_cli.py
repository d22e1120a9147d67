"""`devicefabric bridge run --control-plane kube` as a user starts it: configuration errors.

Without a usable kubeconfig (and outside a cluster), with leader-election timings that could
let two replicas lead at once, or with a Lease namespace that does not exist, the bridge refuses
to start: exit code 2 and one line naming what to fix. The running cases are in
test_bridge_kube.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeApiServer, Match
from tests.support.ports import free_port


def bridge_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    password = tmp_path / "bridge.password"
    password.write_text("x" * 43 + "\n", encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICEFABRIC_", "KUBE"))}
    argv = [
        sys.executable,
        "-m",
        "devicefabric",
        "bridge",
        "run",
        "--control-plane",
        "kube",
        "--password-file",
        str(password),
        "--http",
        "127.0.0.1:0",
    ]
    return subprocess.run(
        argv,
        env={**base, "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KUBECONFIG": "/nonexistent/kubeconfig"}, "set KUBECONFIG"),
        (
            {"DEVICEFABRIC_LEASE_DURATION": "5", "DEVICEFABRIC_RENEW_DEADLINE": "10"},
            "DEVICEFABRIC_LEASE_DURATION=5",
        ),
        ({"DEVICEFABRIC_RETRY_PERIOD": "soon"}, "DEVICEFABRIC_RETRY_PERIOD"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = bridge_run(tmp_path, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]


def test_a_missing_lease_namespace_exits_2_naming_it_and_the_flag(
    api: FakeApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    api.namespaces = {"default"}  # outside a cluster, nobody created devicefabric-system
    result = bridge_run(
        tmp_path,
        KUBECONFIG=str(kubeconfig),
        DEVICEFABRIC_BROKER=f"mqtt://127.0.0.1:{free_port()}",  # no broker needed to fail
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()  # log lines (INFO, WARNING), then the error
    errors = [line for line in lines if line.startswith("devicefabric: error: ")]
    assert errors == lines[-1:], result.stderr
    assert "'devicefabric-system' does not exist" in errors[0]
    assert "--lease-namespace" in errors[0]
    assert api.log.count(Match(verb="create", resource="leases")) == 1
