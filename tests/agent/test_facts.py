"""The agent's device facts: read cheaply, cut to the birth's bounds, and a failed read omits only
that fact, never the birth."""

from __future__ import annotations

import os
from typing import Any

import pytest

from devicefabric.agent import facts
from devicefabric.config import lean, wire


def _uname(**fields: str) -> Any:
    base = {
        "sysname": "Linux",
        "nodename": "edge-7",
        "release": "6.1.0",
        "version": "#1 SMP",
        "machine": "x86_64",
    }
    return os.uname_result(tuple({**base, **fields}.values()))


def _born(gathered: lean.BirthFacts) -> wire.StatusOnline:
    birth = wire.decode_status(lean.encode_online("s1", 15, "0.1.0", **gathered))
    assert isinstance(birth, wire.StatusOnline)
    return birth


def test_this_machine_s_facts_make_a_valid_birth() -> None:
    gathered = facts.gather()
    assert set(gathered) == {"os", "arch", "kernel", "hostname", "cpus", "memory_bytes"}
    birth = _born(gathered)
    assert (birth.os, birth.arch, birth.cpus) == (
        os.uname().sysname,
        os.uname().machine,
        os.cpu_count(),
    )


def test_long_or_undecodable_strings_are_cut_to_the_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = b"h\xff".decode("utf-8", "surrogateescape")  # what os.uname gives for non-UTF-8 bytes
    monkeypatch.setattr(os, "uname", lambda: _uname(nodename=odd * 300, release="k" * 500))
    gathered = facts.gather()
    assert gathered["hostname"] == ("h\ufffd" * 300)[:253]
    assert gathered["kernel"] == "k" * 128
    assert (gathered["os"], gathered["arch"]) == ("Linux", "x86_64")
    assert _born(gathered).hostname == gathered["hostname"]


def _fail(*_args: object) -> Any:
    raise OSError("not here")


@pytest.mark.parametrize(
    ("attribute", "replacement", "missing"),
    [
        ("uname", _fail, {"os", "arch", "kernel", "hostname"}),
        ("cpu_count", lambda: None, {"cpus"}),
        ("cpu_count", lambda: 70000, {"cpus"}),
        ("sysconf", _fail, {"memory_bytes"}),
        ("sysconf", lambda _name: -1, {"memory_bytes"}),
    ],
)
def test_a_fact_that_cannot_be_read_is_left_out(
    monkeypatch: pytest.MonkeyPatch, attribute: str, replacement: Any, missing: set[str]
) -> None:
    monkeypatch.setattr(os, attribute, replacement)
    gathered = facts.gather()
    assert set(gathered) == {"os", "arch", "kernel", "hostname", "cpus", "memory_bytes"} - missing
    _born(gathered)
