"""The inotify wake-up of the local control plane, on a real directory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devicefabric.bridge.controlplane.local.dirwatch import DirectoryWatch


def test_a_write_wakes_the_watch_and_silence_times_out(tmp_path: Path) -> None:
    watch = DirectoryWatch.open(tmp_path)
    if watch is None:
        pytest.skip("inotify is not available here")

    async def story() -> None:
        assert await watch.wait(0.05) is False  # nothing happened
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, (tmp_path / "changes.log").write_text, "1 default/a\n")
        started = time.monotonic()
        assert await watch.wait(5.0) is True
        assert time.monotonic() - started < 2.0
        (tmp_path / "new").write_text("x")  # an event while nobody waits is not lost
        assert await watch.wait(0.0) is True
        assert await watch.wait(0.05) is False  # and it was consumed

    try:
        asyncio.run(story())
    finally:
        watch.close()


def test_a_missing_directory_gives_no_watch(tmp_path: Path) -> None:
    assert DirectoryWatch.open(tmp_path / "absent") is None
