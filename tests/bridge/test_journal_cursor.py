"""`JournalCursor` over real files: appends, rotations it can follow, and what forces a relist."""

from __future__ import annotations

import os
from pathlib import Path

from devicefabric.bridge.controlplane.local.plane import JournalCursor
from devicefabric.runtime.files import atomic_write


def _append(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def _rotate(path: Path) -> None:
    """As `LocalStore._rotate_journal` does: keep it as `.1`, start an empty one."""
    previous = path.with_name(path.name + ".1")
    staged = previous.with_name(previous.name + ".tmp")
    os.link(path, staged)
    staged.replace(previous)
    atomic_write(path, b"")


def _following(journal: Path, *lines: str) -> JournalCursor:
    """A cursor at the end of `journal` after `lines` were written to it (none: as it is)."""
    if lines:
        _append(journal, *lines)
    cursor = JournalCursor(journal)
    cursor.seek_end()
    return cursor


def test_new_lines_are_read_once_and_a_partial_line_waits(tmp_path: Path) -> None:
    journal = tmp_path / "changes.log"
    cursor = _following(journal, "1 default/a")
    assert cursor.poll() == []
    _append(journal, "2 default/b", "3 default/c")
    with journal.open("a", encoding="utf-8") as fh:
        fh.write("4 default/d")  # no newline yet
    assert cursor.poll() == [(2, "default/b"), (3, "default/c")]
    assert cursor.poll() == []
    _append(journal, "")
    assert cursor.poll() == [(4, "default/d")]


def test_one_rotation_is_followed_into_the_new_file(tmp_path: Path) -> None:
    journal = tmp_path / "changes.log"
    cursor = _following(journal, "1 default/a")
    _append(journal, "2 default/b")  # written before the rotation, not read yet
    _rotate(journal)
    _append(journal, "3 default/c")
    assert cursor.poll() == [(2, "default/b"), (3, "default/c")]
    _append(journal, "4 default/d")
    assert cursor.poll() == [(4, "default/d")]


def test_two_rotations_behind_or_a_replaced_file_means_relist(tmp_path: Path) -> None:
    journal = tmp_path / "changes.log"
    cursor = _following(journal, "1 default/a")
    _rotate(journal)
    _append(journal, "2 default/b")
    _rotate(journal)
    assert cursor.poll() is None  # `.1` is no longer the file it was reading
    cursor.seek_end()
    atomic_write(journal, b"9 default/z\n")  # replaced by hand, no `.1` of ours
    assert cursor.poll() is None


def test_a_journal_shrunk_in_place_means_relist(tmp_path: Path) -> None:
    journal = tmp_path / "changes.log"
    cursor = _following(journal, "1 default/a", "2 default/b")
    with journal.open("r+b") as fh:
        fh.truncate(3)
    assert cursor.poll() is None


def test_a_journal_that_appears_after_the_start_is_read_from_its_beginning(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "changes.log"
    cursor = _following(journal)
    assert cursor.poll() == []
    _append(journal, "1 default/a")
    assert cursor.poll() == [(1, "default/a")]
