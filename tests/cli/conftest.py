"""`procs`: long-running CLI subprocesses a test started, stopped (SIGINT, bounded) at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cli import Background


@pytest.fixture
def procs() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for proc in reversed(started):
        proc.stop()
