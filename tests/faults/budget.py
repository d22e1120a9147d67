"""How hard the fault tests push: short under `make test`, long with `FAULTS_LONG=1`.

Fuzz targets run `EXAMPLES` hypothesis examples each: a few hundred by default, so the whole
fault suite stays within seconds, and at least 10,000 in the long mode. `FAULTS_EXAMPLES`
overrides the count either way (e.g. to reproduce or to push one target harder).

`FUZZ` is the one hypothesis profile every fuzz test uses: no per-example deadline (the machine is
shared, and a slow example is not a bug) and the health checks about slow or large generated data
switched off for the same reason; the failures they exist to catch are not ours to catch here. A
failing example is printed with its reproduction blob and stored in hypothesis' example database
(`.hypothesis/`, git-ignored), so the next run replays it first.

`MARKS` goes into every fuzz module's `pytestmark`: the `faults` marker, and in the long mode a
per-test timeout that fits 10,000 examples (the project-wide 120 s would cut a long run short).

`outcome(call, error)`: a call's value, or the expected error it raised, as a value. Property
tests check both branches of a validator: what it refuses (the error and its reason) and what it
accepts (a value that is usable). Taking the error out of its `except` block keeps those
assertions in plain sight, and any *other* exception still escapes and fails the test, which is
the invariant being fuzzed ("no exception other than the module's documented error").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, TypeVar

import pytest
from hypothesis import HealthCheck, settings

LONG: Final = os.environ.get("FAULTS_LONG", "").strip().lower() in ("1", "true", "yes", "on")
SHORT_EXAMPLES: Final = 200
LONG_EXAMPLES: Final = 10_000
EXAMPLES: Final = int(
    os.environ.get("FAULTS_EXAMPLES") or (LONG_EXAMPLES if LONG else SHORT_EXAMPLES)
)

FUZZ: Final = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=(
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ),
    print_blob=True,
)

MARKS: Final = (
    pytest.mark.faults,
    *((pytest.mark.timeout(3600),) if EXAMPLES > SHORT_EXAMPLES else ()),
)


R = TypeVar("R")
E = TypeVar("E", bound=BaseException)


def outcome(call: Callable[[], R], error: type[E]) -> R | E:
    try:
        return call()
    except error as exc:
        return exc
