"""Wake up when a directory changes: Linux inotify through ctypes, driven by the event loop.

The local control plane used to `stat` its journal every 20 ms; with `DirectoryWatch` it sleeps
until the kernel says a file in the state directory was written, created or renamed into it, so
another process's `apply` is seen within a millisecond and an idle bridge makes no syscalls.

`DirectoryWatch.open(path)` returns None where inotify cannot be used (not Linux, no libc symbol,
the watch limit reached, a file system without it): the caller then polls, as before. A watch is
a hint only: `wait(at_most)` returns after an event *or* that many seconds, and the caller always reads
the journal for what changed, so a missed or coalesced event costs at most one timeout.
Invariant: the descriptor is registered with the loop only inside `wait` and closed by `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from pathlib import Path
from typing import Final, Self

log = logging.getLogger("devicefabric.bridge.local")

IN_MODIFY: Final = 0x00000002
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_NONBLOCK: Final = 0o4000
IN_CLOEXEC: Final = 0o2000000
MASK: Final = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
READ_SIZE: Final = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "inotify_init1") or not hasattr(libc, "inotify_add_watch"):
        return None
    return libc


class DirectoryWatch:
    """An inotify descriptor watching one directory (see the module doc)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> Self | None:
        """A watch on `path`, or None when inotify is not available here (poll instead)."""
        libc = _libc()
        if libc is None:
            return None
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            log.info("inotify unavailable (%s): polling", os.strerror(ctypes.get_errno()))
            return None
        if int(libc.inotify_add_watch(fd, os.fsencode(path), MASK)) < 0:
            log.info("cannot watch %s (%s): polling", path, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        return cls(fd)

    async def wait(self, at_most: float) -> bool:
        """Until something in the directory changed (True) or `at_most` s passed (False)."""
        if self._drain():
            return True
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self._fd, ready.set)
        try:
            async with asyncio.timeout(at_most):
                await ready.wait()
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self._fd)
        self._drain()
        return True

    def _drain(self) -> bool:
        """Read every pending event (their content does not matter); whether there was any."""
        seen = False
        while True:
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return seen
            except OSError:
                return True  # an overflowed or broken queue: treat as "something changed"
            if not chunk:
                return seen
            seen = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
