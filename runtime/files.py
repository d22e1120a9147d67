"""Files replaced atomically: a reader sees the old content or the new, never a mix.

`atomic_write(path, data)`: the data goes to a synced temporary file beside `path` (a short
hidden name, `.tmp-*`, that fits whatever name `path` has), is renamed over it, and the directory
is synced, so the rename survives a crash. On any failure the temporary file is removed and
`path` is untouched. `stage` and `fsync_dir` are the two halves, for writers that commit several
files together (the local store stages every file first, then renames them all).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (temp file, fsync, rename, fsync of the directory)."""
    tmp = stage(path, data)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def stage(path: Path, data: bytes) -> Path:
    """`data` in a synced temporary file beside `path` (mode 0600); its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def fsync_dir(directory: Path) -> None:
    """Sync `directory`, so that renames in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
