"""Running the real `devicefabric` CLI as a subprocess (`python -m devicefabric ...`).

`run_cli` runs a short command to completion (with a deadline) and returns what a user sees:
exit code, stdout, stderr. `sample_manifest` writes a DeviceProcess YAML for a test to apply.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLI_TIMEOUT: Final = 20.0


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "devicefabric", *args]


def run_cli(*args: str, stdin: str | None = None, timeout: float = CLI_TIMEOUT) -> Result:
    proc = subprocess.run(
        cli_argv(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


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
