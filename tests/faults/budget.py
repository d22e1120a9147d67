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
"""

from __future__ import annotations

import os
from typing import Final

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
