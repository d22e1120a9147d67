"""What a test needs from the machine: a missing tool skips it, except on CI, where it fails.

CI must not go green by skipping the production broker, the NATS cluster, the terminal screens
or the network namespaces: under `CI=true`, `missing(message)` fails the test (without a
traceback) where a developer's machine skips it. `require_tool(name, hint)` is the common case:
a program on PATH, returned by path.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> NoReturn:
    """Skip the test for `message`, or fail it under CI=true."""
    if on_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_tool(name: str, hint: str) -> str:
    """The path of program `name` on PATH; `missing` (with `hint`: how to install it) if none."""
    found = shutil.which(name)
    if found is None:
        missing(f"{name} not found: {hint}")
    return found
