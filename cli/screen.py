"""A terminal split in two: a panel fixed at the top, redrawn in place, and logs scrolling below.

`devicefabric up --demo` on a terminal shows the `get` table (and the latest Events) in the
panel while the program's log lines scroll underneath, as `top` keeps its header. Plain ANSI/VT100
(no curses, no third-party library), which every terminal emulator and tmux understand:

- the rows below the panel are a scroll region (DECSTBM `ESC [ top ; bottom r`): a log line written
  at its bottom scrolls that region only, never the panel;
- the panel is drawn by saving the cursor (`ESC 7`), writing each of its rows at an absolute
  position, erasing the rest of the row, and restoring the cursor (`ESC 8`), so a redraw never
  moves where the next log line goes.

Invariants: the panel's height only grows (empty rows pad it), so the region is set once per
size change rather than on every redraw; the panel keeps at least `MIN_LOG_ROWS` rows for logs
and cuts its own lines to the terminal's width (a wrapped panel row would spill into the
region); one lock orders panel redraws and log lines, from any thread. `close()` resets the
scroll region and leaves the cursor on the last row. The sequences are built by pure functions
(`region_sequence`, `panel_sequence`), tested on their own and, for real, in tmux.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Sequence
from typing import Final, TextIO

MIN_LOG_ROWS: Final = 5
SEPARATOR: Final = "-- logs "


def region_sequence(top: int, rows: int) -> str:
    """Clear the screen and make rows `top + 1 .. rows` (1-based) the scroll region.

    The cursor is left at the region's first row, where the first log line goes.
    """
    return f"\x1b[r\x1b[H\x1b[2J\x1b[{top + 1};{rows}r\x1b[{top + 1};1H"


def panel_sequence(lines: Sequence[str], height: int, cols: int) -> str:
    """Draw `lines` on rows 1..`height` (padded with empty rows, each cut to `cols`)."""
    cells = [line[:cols] for line in lines[:height]]
    cells += [""] * (height - len(cells))
    body = "".join(f"\x1b[{row};1H{text}\x1b[K" for row, text in enumerate(cells, start=1))
    return f"\x1b7{body}\x1b8"


class SplitScreen:
    """The panel + log region on `out` (a terminal); see the module docstring."""

    def __init__(self, out: TextIO, title: str = "") -> None:
        self._out = out
        self._title = title
        self._lock = threading.Lock()
        self._height = 0
        self._size: tuple[int, int] | None = None

    def draw(self, lines: Sequence[str]) -> None:
        """Redraw the panel with `lines`, followed by a separator row."""
        cols, rows = shutil.get_terminal_size()
        separator = (SEPARATOR + self._title + " ").ljust(cols, "-")
        wanted = min(max(self._height, len(lines) + 1), max(1, rows - MIN_LOG_ROWS))
        with self._lock:
            if wanted != self._height or (cols, rows) != self._size:
                self._height, self._size = wanted, (cols, rows)
                self._out.write(region_sequence(wanted, rows))
            shown = list(lines[: wanted - 1])
            shown += [""] * (wanted - 1 - len(shown)) + [separator]
            self._out.write(panel_sequence(shown, wanted, cols))
            self._out.flush()

    def write_log(self, text: str) -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def close(self) -> None:
        """Give the whole terminal back (scroll region reset), cursor on the last row."""
        with self._lock:
            if self._size is not None:
                self._out.write(f"\x1b[r\x1b[{self._size[1]};1H\n")
                self._out.flush()
            self._size = None
            self._height = 0


class ScreenLogHandler(logging.Handler):
    """A logging handler that prints into a `SplitScreen`'s log region."""

    def __init__(self, screen: SplitScreen, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self._screen = screen
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._screen.write_log(self.format(record))
        except Exception:  # a log line must never take the program down
            self.handleError(record)
