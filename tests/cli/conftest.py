"""Fixtures of the CLI stories.

`procs`: long-running CLI subprocesses a test started, stopped (SIGINT, bounded) at teardown.
`tmux`: the name of a tmux session for a test that reads a terminal's screen, killed at teardown
(skips when tmux is missing, except under CI=true, where it fails: CI must run those stories).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.support.cli import Background


@pytest.fixture
def procs() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def tmux() -> Iterator[str]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("tmux is not installed (CI must read the terminal screens)")
        pytest.skip("tmux is not installed")
    session = f"df-{uuid.uuid4().hex[:8]}"
    yield session
    subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


def screen(session: str) -> str:
    """What the tmux session's terminal shows now."""
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False
    ).stdout
