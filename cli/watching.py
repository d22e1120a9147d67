"""`devicefabric get --watch`: the `get` table, kept up to date, as `kubectl get -w` does.

    devicefabric get --watch [NAME...] [-o wide] [-n NS | -A] [--state-dir DIR]

Two renderings of one stream of snapshots:
- on a terminal, the whole table is redrawn in place (cursor home, clear below) whenever a row
  changes and at least every `REDRAW_S`, so the AGE column ticks; the header line says what is
  watched; rows are cut to the terminal's width (a wrapped row would break the columns);
- otherwise (a pipe, a file, a log collector), the table is printed once and then one line is
  appended per change: the row as it is now, aligned with the first table's columns, with
  ` (deleted)` after a row that went away. AGE alone changing is not a change.

The core is pure: `Rows` (key -> cells) from a snapshot, `changed(before, after)` -> the lines to
append. The loop polls a change mark (one `stat` per `POLL_S`) and reloads only when it moved, so
watching costs nothing while the fabric is quiet. For the local store the mark is the journal's
inode and size, not the revision file: a writer bumps the revision before it writes the data and
appends the journal line after, so a reload the journal triggered always finds the data. It returns 0 on Ctrl-C or
SIGTERM. Any kind `get` shows can be watched: the loop takes a `Table` (how to list and render
that kind), not DeviceProcesses in particular.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Final, TextIO

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.cli.verbs import _wide_cells, render_table, table_row

POLL_S: Final = 0.2
REDRAW_S: Final = 1.0
CLEAR: Final = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen
DELETED: Final = " (deleted)"

Cells = tuple[str, ...]
Rows = dict[str, Cells]


@dataclass(frozen=True, slots=True)
class Table:
    """How to watch one kind: list its objects, cut them into cells, draw the whole table."""

    load: Callable[[], Sequence[Resource]]
    cells: Callable[[Resource, datetime], Cells]
    render: Callable[[Sequence[Resource], datetime], str]
    age_column: int  # excluded from change detection (it changes every second)
    revision: Callable[[], object]  # a mark that moves after (never before) a change is readable


def rows_of(table: Table, resources: Sequence[Resource], now: datetime) -> Rows:
    return {res.key: table.cells(res, now) for res in resources}


def changed(before: Mapping[str, Cells], after: Mapping[str, Cells], age_column: int) -> list[str]:
    """Keys whose row changed (AGE aside) or appeared, then keys that disappeared, sorted."""

    def sans_age(cells: Cells) -> Cells:
        return cells[:age_column] + cells[age_column + 1 :]

    moved = [
        key
        for key in sorted(after)
        if key not in before or sans_age(before[key]) != sans_age(after[key])
    ]
    return moved + sorted(key for key in before if key not in after)


def line(cells: Cells, widths: Sequence[int]) -> str:
    """One row aligned with the first table's columns (wider cells just push the rest right)."""
    padded = [cell.ljust(widths[i]) if i < len(widths) else cell for i, cell in enumerate(cells)]
    return "   ".join(padded).rstrip()


def widths_of(header: Cells, rows: Mapping[str, Cells]) -> list[int]:
    """The column widths `render_table` gives the same header and rows."""
    return [
        max([len(name)] + [len(r[i]) for r in rows.values() if i < len(r)])
        for i, name in enumerate(header)
    ]


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    pass


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def watch(table: Table, title: str, out: TextIO = sys.stdout) -> int:
    """Print, then keep printing, until Ctrl-C or SIGTERM (see the module docstring)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if out.isatty():
            _watch_terminal(table, title, out)
        else:
            _watch_lines(table, out)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _watch_lines(table: Table, out: TextIO) -> None:
    now = datetime.now(UTC)
    revision = table.revision()
    resources = table.load()
    rows = rows_of(table, resources, now)
    first = table.render(resources, now)
    widths = widths_of(tuple(first.splitlines()[0].split()), rows)
    out.write(first + "\n")
    out.flush()
    while True:
        time.sleep(POLL_S)
        current = table.revision()
        if current == revision:
            continue
        revision = current
        now = datetime.now(UTC)
        after = rows_of(table, table.load(), now)
        for key in changed(rows, after, table.age_column):
            if key in after:
                out.write(line(after[key], widths) + "\n")
            else:
                out.write(line(rows[key], widths) + DELETED + "\n")
        out.flush()
        rows = after


def _watch_terminal(table: Table, title: str, out: TextIO) -> None:
    revision: object = None
    drawn = 0.0
    while True:
        current = table.revision()
        if current != revision or time.monotonic() - drawn >= REDRAW_S:
            revision = current
            drawn = time.monotonic()
            now = datetime.now(UTC)
            stamp = now.strftime("%H:%M:%S")
            body = table.render(table.load(), now)
            cols = shutil.get_terminal_size().columns  # a wrapped row would break the table
            text = f"{title}   {stamp}   (Ctrl-C to stop)\n\n{body}"
            out.write(CLEAR + "\n".join(ln[:cols] for ln in text.splitlines()) + "\n")
            out.flush()
        time.sleep(POLL_S)


# -- DeviceProcesses in the local control plane ---------------------------------------------------
def deviceprocess_table(
    store: LocalStore,
    keys: Sequence[str] | None,
    namespace: str | None,
    *,
    wide: bool = False,
    with_namespace: bool = False,
) -> Table:
    """`get`'s DeviceProcess table: fixed `keys`, or every key in `namespace` (None: all)."""

    def load() -> list[Resource]:
        wanted = (
            keys
            if keys is not None
            else [
                k for k in store.list_keys() if namespace is None or k.startswith(namespace + "/")
            ]
        )
        return [res for key in wanted if (res := store.load(key)) is not None]

    def cells(res: Resource, now: datetime) -> Cells:
        row = [res.namespace] if with_namespace else []
        row += table_row(res, now)
        if wide:
            row += _wide_cells(res)
        return tuple(row)

    def render(resources: Sequence[Resource], now: datetime) -> str:
        return render_table(resources, wide=wide, with_namespace=with_namespace, now=now)

    return Table(
        load=load,
        cells=cells,
        render=render,
        age_column=(1 if with_namespace else 0) + 5,
        revision=lambda: journal_mark(store),
    )


def journal_mark(store: LocalStore) -> tuple[int, int]:
    """The journal's (inode, size): it moves when a line is appended or the journal rotates."""
    try:
        stat = store.journal_path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_ino, stat.st_size)
