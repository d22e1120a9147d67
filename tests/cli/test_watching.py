"""`devicefabric get --watch`: appended lines in a pipe, one table redrawn in place on a terminal.

The stories run the real CLI against a real state directory and make real changes through the
same store the bridge writes (`apply`, a status patch, `delete`). The terminal story runs the
watch inside tmux and reads the screen, as a person would see it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.cli.watching import changed, deviceprocess_table
from tests.cli.conftest import screen, tmux_argv
from tests.support.cli import Background, cli_argv, manifest_text, run_cli, write_manifest
from tests.support.waiting import wait_for

SLEEP = [sys.executable, "-c", "pass"]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({}, {}, []),
        ({"a": ("a", "1s")}, {"a": ("a", "9s")}, []),  # only AGE moved: not a change
        ({"a": ("a", "1s")}, {"a": ("b", "9s")}, ["a"]),
        ({}, {"b": ("b", "0s"), "a": ("a", "0s")}, ["a", "b"]),
        ({"a": ("a", "1s"), "z": ("z", "1s")}, {"b": ("b", "0s")}, ["b", "a", "z"]),
    ],
)
def test_changed_rows_ignore_age_and_list_deletions_last(
    before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]], expected: list[str]
) -> None:
    assert changed(before, after, age_column=1) == expected


def test_the_change_mark_moves_only_once_a_write_is_readable(tmp_path: Path) -> None:
    """A writer bumps the revision first, writes the data, then appends the journal line: a
    watcher that reloaded on the revision could read the old data and then miss the change."""
    state = tmp_path / "state"
    _apply(tmp_path, state, "first")
    store = LocalStore(state)
    table = deviceprocess_table(store, None, "default")
    before = table.revision()
    store._set_revision(store.revision() + 1)  # a writer's first step, data not written yet
    assert table.revision() == before
    store.patch_status("default/first", {"phase": "Running"})  # the whole write
    assert table.revision() != before


def _apply(tmp_path: Path, state: Path, name: str) -> None:
    path = write_manifest(tmp_path / f"{name}.yaml", manifest_text(name, "dev-1", SLEEP))
    assert run_cli("apply", "-f", str(path), "--state-dir", str(state)).code == 0


def test_get_watch_in_a_pipe_appends_one_line_per_change(
    tmp_path: Path, procs: list[Background]
) -> None:
    state = tmp_path / "state"
    _apply(tmp_path, state, "first")
    watch = Background("watch", cli_argv("get", "--watch", "--state-dir", str(state)), tmp_path)
    procs.append(watch)
    watch.wait_for(lambda: "first" in watch.out, timeout=10, what="the first table")
    assert watch.out.splitlines()[0].split() == [
        "NAME",
        "DEVICE",
        "PHASE",
        "CONNECTED",
        "RESTARTS",
        "AGE",
    ]

    LocalStore(state).patch_status("default/first", {"phase": "Running", "restarts": 2})
    watch.wait_for(lambda: len(watch.out.splitlines()) == 3, timeout=10, what="a line appended")
    assert watch.out.splitlines()[2].split()[:5] == ["first", "dev-1", "Running", "-", "2"]

    _apply(tmp_path, state, "second")
    watch.wait_for(lambda: len(watch.out.splitlines()) == 4, timeout=10, what="the new resource")
    assert watch.out.splitlines()[3].split()[0] == "second"

    assert run_cli("delete", "first", "--state-dir", str(state)).code == 0
    watch.wait_for(lambda: len(watch.out.splitlines()) == 5, timeout=10, what="the deletion")
    assert watch.out.splitlines()[4].startswith("first ")
    assert watch.out.splitlines()[4].endswith("(deleted)")

    assert watch.stop(signal.SIGTERM, timeout=5) == 0
    assert len(watch.out.splitlines()) == 5  # the table once, then only the changes
    assert watch.err == ""


def test_get_watch_refuses_yaml_output_in_one_line(tmp_path: Path) -> None:
    result = run_cli("get", "-w", "-o", "yaml", "--state-dir", str(tmp_path))
    assert result.code == 2
    assert result.err == (
        "devicefabric: error: get: --watch shows a table: use it without -o or with -o wide\n"
    )


def test_get_watch_on_a_terminal_redraws_one_table_in_place(tmp_path: Path, tmux: str) -> None:
    state = tmp_path / "state"
    _apply(tmp_path, state, "first")
    command = " ".join(cli_argv("get", "-w", "--state-dir", str(state)))
    subprocess.run(
        tmux_argv(tmux, "new-session", "-d", "-s", tmux, "-x", "120", "-y", "20", command),
        check=True,
    )

    wait_for(lambda: "first" in screen(tmux), timeout=10, what="the table on the terminal")
    LocalStore(state).patch_status("default/first", {"phase": "Running"})
    _apply(tmp_path, state, "second")

    def redrawn() -> str:
        text = screen(tmux)
        return text if "Running" in text and "second" in text else ""

    text = wait_for(redrawn, timeout=10, what="the redrawn table")
    lines = text.splitlines()
    assert lines[0].startswith("deviceprocesses in namespace default")
    assert sum(line.startswith("NAME ") for line in lines) == 1  # redrawn, not appended
    assert [line.split()[0] for line in lines if line.startswith(("first", "second"))] == [
        "first",
        "second",
    ]
