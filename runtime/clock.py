"""Timestamps as the fabric writes them: RFC 3339, UTC, whole seconds (`2026-12-05T16:40:00Z`).

Kubernetes' `metav1.Time` format: status conditions, `startedAt`, Events and the local store's
`creationTimestamp` all use it, so one function formats and one parses.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Final

RFC3339: Final = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(when: datetime | None = None) -> str:
    """`when` (default: now) as RFC 3339 UTC with whole seconds."""
    return (when or datetime.now(UTC)).strftime(RFC3339)


@functools.lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> datetime | None:
    """The time `rfc3339` wrote, or None for anything else (cached: listings repeat seconds)."""
    try:
        return datetime.strptime(text, RFC3339).replace(tzinfo=UTC)
    except ValueError:
        return None
