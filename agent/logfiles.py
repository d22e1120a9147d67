"""The optional on-disk mirror of a process's output: a file per stream, rotated once to `.1`.

`RotatingFile(path, limit)` appends what one stream of a process printed, as it came, to `path`
(`<namespace>_<name>.stdout.log`, `.stderr.log`: one file per stream, so partial lines of the
two never interleave); past `limit` bytes the file becomes `path.1` (replacing an older one) and
a new one starts, so a stream uses at most twice `limit` on disk however much it prints. The directory is
created on the first write. A write that fails (disk full, read-only) turns the mirror off with
one warning and never touches the process: the ring buffer in memory goes on.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import BinaryIO, Final

log = logging.getLogger("devicefabric.agent.logs")

MIN_FILE_BYTES: Final = 64 * 1024
MAX_FILE_BYTES: Final = 1024**3


def file_name(key: str, stream: str) -> str:
    """`<namespace>_<name>.<stream>.log` for `<namespace>/<name>` (a namespace has no `_`)."""
    namespace, _, name = key.partition("/")
    return f"{namespace}_{name}.{stream}.log"


class RotatingFile:
    """See the module doc."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._fh: BinaryIO | None = None
        self._size = 0
        self.broken = False

    def write(self, chunk: bytes) -> None:
        if self.broken or not chunk:
            return
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("ab")
                self._size = self._fh.tell()
            if self._size and self._size + len(chunk) > self.limit:
                self._fh.close()
                self.path.replace(self.path.with_name(self.path.name + ".1"))
                self._fh = self.path.open("ab")
                self._size = 0
            self._fh.write(chunk)
            self._fh.flush()
            self._size += len(chunk)
        except OSError as exc:
            self.broken = True
            log.warning("log file %s turned off: %s", self.path, exc)
            self.close()

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
