"""Fixtures of the CLI stories.

`procs`: long-running CLI subprocesses a test started, stopped (SIGINT, bounded) at teardown.
`tmux`: the name of a tmux session for a test that reads a terminal's screen, on a tmux server of
its own (`tmux_argv`: `-L` socket named after the session, so no other server's environment or
sessions are involved), killed at teardown. Skips when tmux is missing, except under CI=true,
where it fails: CI must run those stories.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Background
from tests.support.requires import require_tool


@pytest.fixture
def procs() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def tmux() -> Iterator[str]:
    require_tool("tmux", "install tmux (CI must read the terminal screens)")
    session = f"df-{uuid.uuid4().hex[:8]}"
    yield session
    socket_path = subprocess.run(
        tmux_argv(session, "display-message", "-p", "#{socket_path}"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    subprocess.run(tmux_argv(session, "kill-server"), check=False, capture_output=True)
    if socket_path:  # tmux leaves its socket file behind
        Path(socket_path).unlink(missing_ok=True)


def tmux_argv(session: str, *args: str) -> list[str]:
    """A tmux command on the session's own server."""
    return ["tmux", "-L", session, *args]


def screen(session: str) -> str:
    """What the tmux session's terminal shows now."""
    return subprocess.run(
        tmux_argv(session, "capture-pane", "-p", "-t", session),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
