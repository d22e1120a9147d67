"""Children a crashed agent left behind are stopped by the next run, and only those."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicefabric.agent.leftovers import CHILDREN_FILE, ChildLedger, start_time
from tests.support.procfs import alive

IGNORE_TERM = "trap '' TERM; while :; do sleep 0.05; done"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def spawn(started: list[subprocess.Popen[bytes]], *argv: str) -> int:
    proc = subprocess.Popen(list(argv), start_new_session=True)
    started.append(proc)
    return proc.pid


def test_recorded_children_of_a_previous_run_are_stopped(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / CHILDREN_FILE
    previous = ChildLedger(path)
    polite = spawn(children, "/bin/sleep", "60")
    stubborn = spawn(children, "/bin/sh", "-c", IGNORE_TERM)
    finished = spawn(children, "/bin/sleep", "60")
    for pid in (polite, stubborn, finished):
        previous.started(pid)
    previous.ended(finished)  # it exited under the previous run: not a leftover

    stopped = asyncio.run(ChildLedger(path).stop_leftovers(grace=0.3))

    assert sorted(stopped) == sorted([polite, stubborn])
    assert not alive(polite)
    assert not alive(stubborn)
    assert alive(finished)
    assert path.read_text() == "{}"


def test_a_reused_pid_is_never_signalled(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    unrelated = spawn(children, "/bin/sleep", "60")
    started = start_time(unrelated)
    assert started is not None
    # the record says another process (another start time) had this pid
    (tmp_path / CHILDREN_FILE).write_text(f'{{"{unrelated}": {started - 1}}}')
    assert asyncio.run(ChildLedger(tmp_path / CHILDREN_FILE).stop_leftovers(grace=0.1)) == []
    assert alive(unrelated)


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '{"x": "y"}'])
def test_an_unreadable_record_is_ignored(tmp_path: Path, content: str) -> None:
    (tmp_path / CHILDREN_FILE).write_text(content)
    assert asyncio.run(ChildLedger(tmp_path / CHILDREN_FILE).stop_leftovers(grace=0.1)) == []
