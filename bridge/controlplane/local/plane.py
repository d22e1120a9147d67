"""The local control-plane backend: an informer over the files of `LocalStore`.

`LocalControlPlane(state_dir)` implements `ControlPlane` for `devicefabric up` and
`bridge run --control-plane local`. `run(on_change)` lists the directory once, calls `on_change`
for every resource found, sets `synced`, then watches: it sleeps until inotify reports a write in
the state directory (`dirwatch`; at most `NOTIFIED_POLL_INTERVAL` s), or, where inotify is not
available, for `poll_interval` (default 0.02 s), then `stat`s the journal `changes.log` (one
syscall whatever the number of resources) and, when it grew, reads the new lines and reloads only
the keys they name. Other processes (`devicefabric apply`/`delete`) are seen within a
millisecond (a tick when polling). A rotated journal is followed into its successor (the old
one is kept as `changes.log.1`), so rotation costs no relist; only a journal replaced by hand or
a reader two rotations behind relists.

Invariants:
- The cache only moves forward: store revisions are global and monotonic, so a reload older than
  the cached object (e.g. read while this process was writing status) is ignored, and a deletion
  is believed only when the cached object is not newer than the journal line that announced it.
- `on_change(key)` fires once per real change of the cached object, whichever path sees it first:
  the watcher (another process's write) or `patch_status` (this process's own write, which updates
  the cache at once, so `get` reads its own writes). Like a Kubernetes watch, a status write is a
  change; the journal echo of the same write finds the cache equal and notifies nothing.
- A status patch that changes nothing writes nothing and notifies nothing.
- `leading` is always set: one local bridge owns its state directory.
- A read that fails for any reason but "missing" (EMFILE under a descriptor flood, EIO...) is
  never taken for a deletion and never fatal: the journal position is kept, the step is retried
  with back-off (`RETRY_MIN` doubling to `RETRY_MAX`) and logged, and the bridge keeps serving
  from its cache meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

from devicefabric.bridge.controlplane.base import EventType, Resource, SingleWriter
from devicefabric.bridge.controlplane.local.dirwatch import DirectoryWatch
from devicefabric.bridge.controlplane.local.fleet import LocalFleet
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.errors import TransientError
from devicefabric.runtime.clock import rfc3339

log = logging.getLogger("devicefabric.bridge.local")

DEFAULT_POLL_INTERVAL: Final = 0.02
NOTIFIED_POLL_INTERVAL: Final = 1.0  # with inotify: the journal is read at least this often
RETRY_MIN: Final = 0.05  # s: first wait after a failed read of the state directory...
RETRY_MAX: Final = 2.0  # ...doubling up to this
REPORTING_CONTROLLER: Final = "devicefabric-bridge"


class JournalCursor:
    """Tails `changes.log`: new `(revision, key)` entries, or None when the caller must relist.

    Across a rotation (`LocalStore._rotate_journal`: the file is kept as `changes.log.1`, a new
    one started) it reads the rest of the old file from `.1`, then the new one from its start:
    nothing is lost and nothing is relisted. It answers None only when it cannot know what it
    missed: its file is neither the current journal nor `.1` (two rotations behind, or a file
    replaced by hand), or the file shrank.
    """

    def __init__(self, path: Path, previous: Path | None = None) -> None:
        self._path = path
        self._previous = previous if previous is not None else path.with_name(path.name + ".1")
        self._inode: int | None = None
        self._offset = 0

    def seek_end(self) -> None:
        """Skip everything written so far (call before the initial list)."""
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._inode, self._offset = None, 0
            return
        self._inode, self._offset = stat.st_ino, stat.st_size

    def position(self) -> tuple[int | None, int]:
        return self._inode, self._offset

    def restore(self, position: tuple[int | None, int]) -> None:
        self._inode, self._offset = position

    def poll(self) -> list[tuple[int, str]] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return [] if self._inode is None else None
        entries: list[tuple[int, str]] = []
        if stat.st_ino != self._inode:
            if self._inode is not None:  # rotated: finish the old file, if it is still there
                try:
                    previous = self._previous.stat()
                except FileNotFoundError:
                    return None
                if previous.st_ino != self._inode or previous.st_size < self._offset:
                    return None
                entries, _ = self._read(self._previous, self._offset, previous.st_size)
            # else the journal appeared after seek_end: all of it is new
            self._inode, self._offset = stat.st_ino, 0
        elif stat.st_size < self._offset:
            return None  # truncated or rewritten in place: positions in it mean nothing
        if stat.st_size > self._offset:
            more, self._offset = self._read(self._path, self._offset, stat.st_size)
            entries += more
        return entries

    @staticmethod
    def _read(path: Path, offset: int, size: int) -> tuple[list[tuple[int, str]], int]:
        """The complete lines of `path` between `offset` and `size`, and the offset after them
        (a line being appended right now waits for the next poll)."""
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read(size - offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        entries = []
        for line in complete.decode("utf-8", "replace").splitlines():
            rev, _, key = line.partition(" ")
            if rev.isdigit() and key:
                entries.append((int(rev), key))
        return entries, offset + len(complete)


class LocalControlPlane(SingleWriter):
    """`ControlPlane` over a state directory (see module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        notify: bool = True,
        store: LocalStore | None = None,
        fleet: bool = True,
    ) -> None:
        """`notify`: wake on inotify events where available (else, or False: poll). `store`
        and `fleet` are for the fleet kinds' own informers (`local.fleet`), which are planes
        of the same kind over their own subdirectory and have no fleet of their own."""
        self.store = store if store is not None else LocalStore(state_dir)
        self.fleet = (
            LocalFleet(state_dir, self, poll_interval=poll_interval, notify=notify)
            if fleet
            else None
        )
        self._poll_interval = poll_interval
        self._notify = notify
        self._cache: dict[str, Resource] = {}
        self._synced = asyncio.Event()
        self._leading = asyncio.Event()
        self._leading.set()
        self._on_change: Callable[[str], None] | None = None
        self.relists = 0  # full re-reads of the directory after the first (tests, metrics)

    @property
    def not_leading(self) -> str | None:
        return None  # the only writer of its state directory

    async def run(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        cursor = JournalCursor(self.store.journal_path)
        watch = DirectoryWatch.open(self.store.journal_path.parent) if self._notify else None
        try:
            await self._retrying(lambda: self._sync(cursor), "the initial list")
            self._synced.set()
            log.info(
                "local control plane synced: %d resources (%s)",
                len(self._cache),
                "inotify" if watch is not None else f"polled every {self._poll_interval}s",
            )
            while True:
                if watch is None:
                    await asyncio.sleep(self._poll_interval)
                else:  # woken by the kernel; the timeout is only a safety net
                    await watch.wait(NOTIFIED_POLL_INTERVAL)
                await self._retrying(lambda: self._follow(cursor), "the journal")
        finally:
            self._on_change = None
            if watch is not None:
                watch.close()

    async def _sync(self, cursor: JournalCursor) -> None:
        cursor.seek_end()
        await self._relist()

    async def _follow(self, cursor: JournalCursor) -> None:
        """Apply what the journal says changed (all of it, or nothing: the cursor moves only
        after every changed resource was read)."""
        position = cursor.position()
        try:
            entries = cursor.poll()
            if entries is None:
                log.info("journal replaced or too far behind: relisting")
                cursor.seek_end()
                self.relists += 1
                await self._relist()
                return
            newest: dict[str, int] = {}
            for rev, key in entries:
                newest[key] = max(rev, newest.get(key, 0))
            loaded = {key: self.store.load(key) for key in newest}
        except OSError:
            cursor.restore(position)  # read it all again on the next try
            raise
        for key, rev in newest.items():
            self._apply(key, loaded[key], rev)

    async def _retrying(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `step` until it passes; a transient `OSError` (EMFILE, ENFILE, EIO...) is logged
        and retried with back-off, never fatal: the bridge keeps serving what it has."""
        delay = RETRY_MIN
        while True:
            try:
                await step()
            except OSError as exc:
                log.warning("cannot read %s (%s); retrying in %.2f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
            else:
                return

    def get(self, key: str) -> Resource | None:
        return self._cache.get(key)

    def resources(self) -> Iterable[Resource]:
        return list(self._cache.values())

    async def patch_status(self, key: str, patch: Mapping[str, object]) -> None:
        try:
            updated = await asyncio.to_thread(self.store.patch_status, key, patch)
        except OSError as exc:
            raise TransientError(f"cannot write status of {key}: {exc}") from exc
        if updated is not None:
            log.debug(
                "status stored at revision %s", updated.resource_version, extra={"resource": key}
            )
            self._apply(key, updated, int(updated.resource_version))

    async def adopt(self, key: str) -> None:
        """Read `key` back after this process wrote it (create, update, delete), so `get` sees
        the write at once and `on_change` announces it (the journal echo then finds it equal)."""
        try:
            as_of = await asyncio.to_thread(self.store.revision)
            loaded = await asyncio.to_thread(self.store.load, key)
        except OSError as exc:
            raise TransientError(f"cannot read back {key}: {exc}") from exc
        self._apply(key, loaded, as_of)

    async def emit_event(self, key: str, type_: EventType, reason: str, message: str) -> None:
        namespace, _, name = key.partition("/")
        cached = self._cache.get(key)
        event = {
            "time": rfc3339(),
            "type": type_,
            "reason": reason,
            "message": message,
            "namespace": namespace,
            "name": name,
            "uid": cached.uid if cached else "",
            "reportingController": REPORTING_CONTROLLER,
        }
        try:
            await asyncio.to_thread(self.store.append_event, event)
        except OSError as exc:
            raise TransientError(f"cannot record event for {key}: {exc}") from exc

    async def _relist(self) -> None:
        as_of = self.store.revision()
        loaded = await asyncio.to_thread(self.store.load_all)
        for key in sorted(set(loaded) | set(self._cache)):
            self._apply(key, loaded.get(key), as_of)

    def _apply(self, key: str, loaded: Resource | None, as_of: int) -> None:
        """Move the cache of `key` to `loaded` unless the cache is newer; notify on a change."""
        current = self._cache.get(key)
        if loaded is not None:
            if current is not None and _rv(current) > _rv(loaded):
                return
            if current == loaded:
                return
            self._cache[key] = loaded
        else:
            if current is None or _rv(current) > as_of:
                return
            del self._cache[key]
        if self._on_change is not None:
            self._on_change(key)


def _rv(resource: Resource) -> int:
    return int(resource.resource_version) if resource.resource_version.isdigit() else 0
