"""`up --demo` on a terminal: the table stays at the top, the log scrolls below it.

The escape sequences are pinned on their own; then `up --demo` runs in a real terminal (tmux)
with DEBUG logs, so far more lines are logged than the log region holds, and the screen is read:
the instructions line and the table are still on top and the newest log line is at the bottom.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicefabric.cli.demo import REFRESH_S as REDRAW_S
from devicefabric.cli.screen import panel_sequence, region_sequence
from tests.cli.conftest import screen as _screen
from tests.cli.conftest import tmux_argv
from tests.support.cli import cli_argv, up_args
from tests.support.waiting import wait_for

ROWS = 24


def test_region_is_the_rows_below_the_panel_and_the_cursor_starts_there() -> None:
    assert region_sequence(5, 24) == "\x1b[r\x1b[H\x1b[2J\x1b[6;24r\x1b[6;1H"


def test_panel_rows_are_cut_padded_and_drawn_between_cursor_save_and_restore() -> None:
    assert panel_sequence(["abcdef", "x"], 3, 4) == (
        "\x1b7\x1b[1;1Habcd\x1b[K\x1b[2;1Hx\x1b[K\x1b[3;1H\x1b[K\x1b8"
    )


@pytest.fixture
def demo_tmux(tmux: str) -> Iterator[str]:
    """The `tmux` session; at teardown, Ctrl-C in it and wait until `up` printed its last table."""
    yield tmux
    subprocess.run(
        tmux_argv(tmux, "send-keys", "-t", tmux, "C-c"), check=False, capture_output=True
    )
    wait_for(
        lambda: "ticker" in _screen(tmux).split("stopping:")[-1] and "stopping:" in _screen(tmux),
        timeout=15,
        what="up --demo to stop and print its last table",
    )


def test_up_demo_keeps_the_table_on_top_while_the_log_scrolls_below(
    tmp_path: Path, demo_tmux: str
) -> None:
    tmux = demo_tmux
    state = tmp_path / "state"
    argv = cli_argv("--log-level", "DEBUG", "--log-format", "text", *up_args(state, "--demo"))
    command = " ".join(argv) + "; sleep 60"
    size = ["-x", "150", "-y", str(ROWS)]
    subprocess.run(tmux_argv(tmux, "new-session", "-d", "-s", tmux, *size, command), check=True)
    log = state / "up.log"

    def scrolled() -> list[str]:
        lines = _screen(tmux).splitlines()
        logged = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        separator = [i for i, line in enumerate(lines) if line.startswith("-- logs ")]
        running = any(line.startswith("ticker ") and "Running" in line for line in lines)
        if not separator or not running or len(logged) < 3 * ROWS:
            return []
        below = [line for line in lines[separator[0] + 1 :] if line.strip()]
        return lines if len(below) >= ROWS - separator[0] - 2 else []

    lines = wait_for(scrolled, timeout=25, what="the table up and the log scrolled")
    # While lines keep coming, every look at the screen finds the panel in place (a screen that
    # scrolled as a whole would show it moved up between two redraws of the panel).
    logged = len(log.read_text(encoding="utf-8").splitlines())
    deadline = time.monotonic() + 2 * REDRAW_S
    looks = 0
    while time.monotonic() < deadline:
        looks += 1
        assert _screen(tmux).splitlines()[0].startswith("devicefabric is up:"), looks
    assert len(log.read_text(encoding="utf-8").splitlines()) > logged  # the log did move
    assert lines[0].startswith("devicefabric is up: broker mqtt://127.0.0.1:")  # still on top
    assert lines[1].startswith("logs: ")  # a short terminal gets the short instructions
    header = next((i for i, ln in enumerate(lines) if ln.startswith("NAME ")), None)
    assert header is not None, "\n".join(lines)
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == [
        "crasher",
        "one-shot",
        "sampler-demo-1",
    ]
    separator = next(i for i, line in enumerate(lines) if line.startswith("-- logs "))
    below = [line for line in lines[separator + 1 :] if line.strip()]
    # log lines (HH:MM:SS LEVEL ...), a long one wrapping onto the next row
    assert sum(line[:9].count(":") == 2 for line in below) >= len(below) // 2
