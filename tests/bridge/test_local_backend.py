"""The local control-plane backend as the bridge core sees it: an informer over the state dir.

Stories: resources applied by another process (the real `devicefabric apply`) reach `on_change`
within a poll; the bridge's own status writes are visible at once, notified once, and a status
that did not change writes nothing; Events land in `events.jsonl`; a rotated journal is followed
without a relist and loses nothing; status writes do not parse the resource file again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
from devicefabric.bridge.errors import NotFoundError
from tests.support.cli import cli_argv, manifest_text, write_manifest
from tests.support.waiting import async_wait_for


class Recorder:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, key: str) -> None:
        self.keys.append(key)


@asynccontextmanager
async def running(state: Path) -> AsyncIterator[tuple[LocalControlPlane, Recorder]]:
    plane = LocalControlPlane(state, poll_interval=0.02)
    seen = Recorder()
    task = asyncio.create_task(plane.run(seen), name="local-control-plane")
    try:
        await asyncio.wait_for(plane.synced.wait(), 5)
        yield plane, seen
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def cli(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(*cli_argv(*args))
    return await asyncio.wait_for(proc.wait(), 20)


def run(story: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(story())


def test_initial_list_then_changes_from_another_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))
    second = write_manifest(tmp_path / "b.yaml", manifest_text("job", "tor9-98", ["true"]))

    async def story() -> None:
        assert await cli("apply", "-f", str(first), "--state-dir", str(state)) == 0
        async with running(state) as (plane, seen):
            assert plane.leading.is_set()
            assert seen.keys == ["default/web"]  # the initial list, before `synced`
            assert await cli("apply", "-f", str(second), "--state-dir", str(state)) == 0
            await async_wait_for(lambda: "default/job" in seen.keys, what="job added")
            job = plane.get("default/job")
            assert job is not None
            assert (job.device, job.generation) == ("tor9-98", 1)

            assert await cli("delete", "web", "--state-dir", str(state)) == 0
            await async_wait_for(lambda: plane.get("default/web") is None, what="web deleted")
            assert seen.keys == ["default/web", "default/job", "default/web"]
            assert [r.key for r in plane.resources()] == ["default/job"]

    run(story)


def test_status_write_is_read_back_notified_once_and_noop_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    web = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))
    marker = write_manifest(tmp_path / "m.yaml", manifest_text("marker", "tor9-98", ["true"]))
    cond = {"type": "AgentConnected", "status": "True", "reason": "Connected"}

    async def story() -> None:
        assert await cli("apply", "-f", str(web), "--state-dir", str(state)) == 0
        async with running(state) as (plane, seen):
            await plane.patch_status("default/web", {"phase": "Running", "conditions": [cond]})
            cached = plane.get("default/web")
            assert cached is not None
            assert cached.status["phase"] == "Running"  # read your own write at once
            assert cached.generation == 1
            revision = plane.store.revision()

            await plane.patch_status("default/web", {"phase": "Running", "conditions": [cond]})
            assert plane.store.revision() == revision  # nothing written

            # A later change from another process is a barrier: the journal is read in order,
            # so once the marker is seen, the echo of our own write has been processed too.
            assert await cli("apply", "-f", str(marker), "--state-dir", str(state)) == 0
            await async_wait_for(lambda: "default/marker" in seen.keys, what="marker")
            assert seen.keys == ["default/web", "default/web", "default/marker"]

            with pytest.raises(NotFoundError):
                await plane.patch_status("default/ghost", {"phase": "Running"})

    run(story)


def test_events_are_recorded_with_the_resource_uid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    web = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))

    async def story() -> None:
        assert await cli("apply", "-f", str(web), "--state-dir", str(state)) == 0
        async with running(state) as (plane, _):
            resource = plane.get("default/web")
            assert resource is not None
            await plane.emit_event("default/web", "Warning", "ConnectionLost", "lost.")
            (event,) = plane.store.events()
            assert event["uid"] == resource.uid
            assert (event["type"], event["reason"], event["name"]) == (
                "Warning",
                "ConnectionLost",
                "web",
            )

    run(story)


def test_a_rotated_journal_is_followed_without_a_relist_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("devicefabric.bridge.controlplane.local.store.JOURNAL_MAX_BYTES", 60)
    state = tmp_path / "state"
    web = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))
    api = write_manifest(tmp_path / "b.yaml", manifest_text("api", "tor9-99", ["sleep", "8"]))

    async def story() -> None:
        assert await cli("apply", "-f", str(web), "--state-dir", str(state)) == 0
        async with running(state) as (plane, seen):
            for phase in ("Pending", "Running", "Failed", "Running"):
                await plane.patch_status("default/web", {"phase": phase})  # rotates the journal
            # another process's writes on both sides of a rotation are all seen
            assert await cli("apply", "-f", str(api), "--state-dir", str(state)) == 0
            assert await cli("delete", "web", "--state-dir", str(state)) == 0
            await async_wait_for(lambda: plane.get("default/web") is None, what="deleted")
            await async_wait_for(lambda: plane.get("default/api") is not None, what="created")
            assert (state / "changes.log.1").is_file()
            assert seen.keys.count("default/web") == 6  # list, 4 writes, delete: nothing twice
            assert seen.keys.count("default/api") == 1
            assert plane.relists == 0

    run(story)


def test_status_writes_and_their_journal_echoes_do_not_parse_the_resource_again(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    web = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))

    async def story() -> None:
        assert await cli("apply", "-f", str(web), "--state-dir", str(state)) == 0
        async with running(state) as (plane, seen):
            parsed = plane.store.parses
            for n in range(20):
                await plane.patch_status("default/web", {"restarts": n})
            await async_wait_for(lambda: plane.store.revision() == 21, what="all written")
            await async_wait_for(lambda: seen.keys.count("default/web") == 21, what="notified")
            assert plane.store.parses == parsed  # status only: the resource file is unchanged
            assert await cli("apply", "-f", str(write_manifest(
                tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "10"])
            )), "--state-dir", str(state)) == 0  # fmt: skip
            await async_wait_for(
                lambda: (r := plane.get("default/web")) is not None and r.generation == 2,
                what="the new spec",
            )
            assert plane.store.parses == parsed + 1  # a changed file is parsed again, once

    run(story)


def test_a_state_dir_created_after_start_is_watched(tmp_path: Path) -> None:
    state = tmp_path / "later"
    web = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))

    async def story() -> None:
        async with running(state) as (plane, seen):
            assert (seen.keys, list(plane.resources())) == ([], [])
            assert await cli("apply", "-f", str(web), "--state-dir", str(state)) == 0
            await async_wait_for(lambda: seen.keys == ["default/web"], what="web added")

    run(story)


class Retries(logging.Handler):
    """Collects the local control plane's "retrying" warnings."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.records.append(record)


def test_a_file_that_cannot_be_read_is_not_a_deletion_and_not_fatal(tmp_path: Path) -> None:
    """A resource file that fails to read with anything but "missing" (here EISDIR; EMFILE under
    a descriptor flood used to end `up`) keeps the cached resource, and is read again until it
    works; the informer keeps running."""
    state = tmp_path / "state"
    first = write_manifest(tmp_path / "a.yaml", manifest_text("web", "tor9-99", ["sleep", "9"]))

    retries: list[logging.LogRecord] = []
    handler = Retries(retries)
    logging.getLogger("devicefabric").addHandler(handler)

    async def story() -> None:
        assert await cli("apply", "-f", str(first), "--state-dir", str(state)) == 0
        async with running(state) as (plane, seen):
            path = state / "resources" / "default" / "web.yaml"
            saved = path.read_bytes()
            path.unlink()
            path.mkdir()  # reading it now fails with IsADirectoryError, not FileNotFoundError
            journal = state / "changes.log"
            rev = int((state / "revision").read_text()) + 1
            with journal.open("a") as fh:  # a writer announces a change of web
                fh.write(f"{rev} default/web\n")
            (state / "revision").write_text(str(rev))
            # a positive marker that the failing read was tried (and retried): the warnings
            await async_wait_for(lambda: len(retries) >= 2, what="two failed reads retried")
            assert plane.get("default/web") is not None
            assert seen.keys == ["default/web"]
            path.rmdir()
            path.write_bytes(saved.replace(b"sleep", b"sleepy"))  # the change, readable now
            await async_wait_for(
                lambda: (r := plane.get("default/web")) is not None and "sleepy" in str(r.spec),
                what="web re-read after the fault",
            )

    try:
        run(story)
    finally:
        logging.getLogger("devicefabric").removeHandler(handler)
