"""Tier 1: the on-disk mirror of a process's output (`agent.logfiles`, `--log-file`)."""

from __future__ import annotations

from pathlib import Path

from devicefabric.agent.logbuffer import LogBuffer
from devicefabric.agent.logfiles import RotatingFile, file_name


def test_the_file_rotates_once_and_stays_within_twice_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "default_p.log"
    mirror = RotatingFile(path, limit=1000)
    for i in range(500):
        mirror.write(f"line {i:04d}\n".encode())  # 10 bytes each: 5,000 in all
    mirror.close()
    current, previous = path.read_bytes(), path.with_name(path.name + ".1").read_bytes()
    assert len(current) <= 1000
    assert len(previous) <= 1000
    assert (previous + current).endswith(b"line 0499\n")
    assert (previous + current).splitlines()[0].startswith(b"line ")
    assert sorted(p.name for p in path.parent.iterdir()) == ["default_p.log", "default_p.log.1"]


def test_a_mirror_that_cannot_write_turns_off_and_the_buffer_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the directory should be")
    buffer = LogBuffer(4096)
    buffer.mirrors["stdout"] = RotatingFile(blocker / "default_p.stdout.log", limit=65536)
    buffer.feed("stdout", b"kept in memory\n", 1.0)
    assert buffer.mirrors["stdout"].broken
    assert [line.text for line in buffer.tail(10)] == ["kept in memory"]


def test_the_buffer_mirrors_each_stream_as_it_came(tmp_path: Path) -> None:
    buffer = LogBuffer(4096)
    for stream in ("stdout", "stderr"):
        buffer.mirrors[stream] = RotatingFile(tmp_path / file_name("ns/web", stream), 65536)
    buffer.feed("stdout", b"one\ntw", 1.0)
    buffer.feed("stderr", b"oops\n", 1.0)  # a partial stdout line is not cut by stderr
    buffer.feed("stdout", b"o\n", 1.0)
    for mirror in buffer.mirrors.values():
        mirror.close()
    assert (tmp_path / "ns_web.stdout.log").read_bytes() == b"one\ntwo\n"
    assert (tmp_path / "ns_web.stderr.log").read_bytes() == b"oops\n"
