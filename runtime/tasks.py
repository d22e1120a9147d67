"""Task groups: the error a program reports when one of its tasks failed."""

from __future__ import annotations

import asyncio


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in `group` (nested groups searched, cancellations skipped), so a
    program ends with `ConfigError: ...`, not with the group around it; the group itself when
    it holds nothing else."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group
