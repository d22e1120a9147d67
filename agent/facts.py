"""The device facts the agent puts in its birth, read once at start and cheaply.

`gather()` reads `os.uname()` (os, arch, kernel, hostname), `os.cpu_count()` and the physical
memory (`SC_PAGE_SIZE x SC_PHYS_PAGES`): no subprocess, no /proc parsing, no new import. Strings
are cut to the birth's bounds (`config.lean.FACT_STRINGS`; bytes that are not UTF-8 become U+FFFD),
and a fact that cannot be read, or is out of its bounds, is left out: a missing fact never costs
the birth.
"""

from __future__ import annotations

import logging
import os
from typing import cast

from devicefabric.config.lean import FACT_INTS, FACT_STRINGS, BirthFacts

log = logging.getLogger("devicefabric.agent.facts")


def _text(value: str) -> str:
    """`value` as valid UTF-8 text (`os.uname` keeps undecodable bytes as lone surrogates)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _memory_bytes() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # unknown name, no sysconf (not POSIX)
        return None
    return pages * size if pages > 0 and size > 0 else None


def gather() -> BirthFacts:
    """The facts this machine shows now; each one absent when it cannot be read."""
    raw: dict[str, object] = {}
    try:
        uname = os.uname()
    except (OSError, AttributeError):
        log.warning("os.uname() failed: the birth carries no os, arch, kernel or hostname")
    else:
        raw.update(
            os=uname.sysname, arch=uname.machine, kernel=uname.release, hostname=uname.nodename
        )
    raw["cpus"] = os.cpu_count()
    raw["memory_bytes"] = _memory_bytes()
    facts: dict[str, object] = {}
    for name, longest in FACT_STRINGS:
        value = raw.get(name)
        if isinstance(value, str) and value:
            facts[name] = _text(value)[:longest]
    for name, lo, hi in FACT_INTS:
        value = raw.get(name)
        if type(value) is int and lo <= value <= hi:
            facts[name] = value
    return cast("BirthFacts", facts)  # names and types checked just above
