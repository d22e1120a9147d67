"""One wording for a pydantic validation error, wherever the fabric shows it.

`apply` (a refused manifest), the `Synced=False/InvalidSpec` condition (a stored spec the bridge
will not send) and the bridge's count of invalid MQTT payloads all describe the same kind of
error; `describe` words it once: `spec.command: List should have at least 1 item after
validation; spec.env.0.name: ... (+2 more)` on one line, bounded.
"""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError

from devicefabric.config.errors import shorten

SHOWN: Final = 3  # errors spelled out; the rest are counted
LIMIT: Final = 300  # characters at most (a condition message, a log line)


def describe(exc: ValidationError, root: str | None = None) -> str:
    """`loc: message` of the first `SHOWN` errors, `; `-separated, then `(+N more)`; `root`
    prefixes every location (`spec` for a resource's spec)."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:SHOWN]:
        loc = ".".join([*([root] if root else []), *(str(p) for p in error["loc"])]) or "<root>"
        parts.append(f"{loc}: {error['msg']}")
    more = f" (+{len(errors) - SHOWN} more)" if len(errors) > SHOWN else ""
    text = "; ".join(parts) + more
    return shorten(text, LIMIT)
