"""Process groups: every supervised command runs in a group of its own, signalled as a whole."""

from __future__ import annotations

import contextlib
import os
import signal


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group that may already be gone (or never was ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
