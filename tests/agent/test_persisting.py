"""The persisted desired document: atomic, survives restarts, a corrupt file is set aside."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from devicefabric.agent.errors import StateDirError
from devicefabric.agent.persisting import CORRUPT_SUFFIX, DESIRED_FILE, StateStore
from devicefabric.config.lean import Desired, encode_desired
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import DesiredProcess, make_desired
from tests.support.desired import lean_of

DEVICE = "tor9-99"


def doc(*names: str, device: str = DEVICE) -> Desired:
    return lean_of(
        make_desired(
            [
                DesiredProcess(
                    namespace="default",
                    name=name,
                    uid=f"uid-{name}",
                    generation=1,
                    spec=DeviceProcessSpec(device_name=device, command=["/bin/sleep", "9"]),
                )
                for name in names
            ]
        )
    )


def test_nothing_persisted_loads_none(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state", DEVICE)
    store.prepare()
    assert store.load() is None
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_saved_document_loads_back_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path, DEVICE)
    store.save(doc("a"))
    store.save(doc("a", "b"))
    assert StateStore(tmp_path, DEVICE).load() == doc("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == [DESIRED_FILE]
    assert (tmp_path / DESIRED_FILE).stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_previous_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path, DEVICE)
    store.save(doc("a"))

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        store.save(doc("b"))
    monkeypatch.undo()
    assert store.load() == doc("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [DESIRED_FILE]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"revision": "r", "processes": "nope"}',
        b"",
        b"x" * (64 * 1024 + 1),
        encode_desired(doc("a", device="another-device")),
    ],
    ids=["invalid-json", "schema", "empty", "oversized", "other-device"],
)
def test_an_unusable_file_is_set_aside_and_reported_not_raised(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / DESIRED_FILE).write_bytes(content)
    store = StateStore(tmp_path, DEVICE)
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    assert (tmp_path / (DESIRED_FILE + CORRUPT_SUFFIX)).read_bytes() == content
    assert not (tmp_path / DESIRED_FILE).exists()
    assert "moved to" in caplog.text
    # the next start is clean: no crash loop on the same file
    assert store.load() is None


def test_a_state_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(StateDirError, match="state directory"):
        StateStore(target, DEVICE).prepare()
