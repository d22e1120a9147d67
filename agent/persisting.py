"""The persisted desired document: edge autonomy across reboots without a broker.

The last applied `desired` document lives in `<state-dir>/desired.json`, written atomically:
a temporary file in the same directory, `fsync`, `rename` over the old file, `fsync` of the
directory. A reader therefore sees the old document or the new one, never a torn mix, even after
a power cut.

On start the agent loads it and runs it before any broker is reachable. A file that cannot be
used (not JSON, wrong schema, oversized, or for another device) is renamed to
`desired.json.corrupt`, logged once as a warning, and the agent starts with nothing: a bad
file must never become a crash loop. IO here is synchronous; the agent calls `save` from a
worker thread so a slow SD card never stalls the event loop.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

from devicefabric.agent.errors import StateDirError
from devicefabric.agent.reconciling import RejectedDesiredError, wants_of
from devicefabric.config.errors import PayloadError
from devicefabric.config.lean import Desired, decode_desired, encode_desired
from devicefabric.runtime.files import atomic_write

log = logging.getLogger("devicefabric.agent.persisting")

DESIRED_FILE: Final = "desired.json"
CORRUPT_SUFFIX: Final = ".corrupt"


class StateStore:
    """The agent's state directory; today it holds the last applied desired document."""

    def __init__(self, state_dir: Path, device: str) -> None:
        self.state_dir = state_dir
        self.device = device
        self.path = state_dir / DESIRED_FILE

    def prepare(self) -> None:
        """Create the directory (mode 0700) and check it is writable; `StateDirError` if not."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateDirError(str(self.state_dir), f"cannot create: {exc.strerror}") from None
        if not self.state_dir.is_dir() or not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise StateDirError(str(self.state_dir), "is not a writable directory")

    def load(self) -> Desired | None:
        """The persisted document, or None when there is none or it was set aside as corrupt."""
        try:
            payload = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._set_aside(f"unreadable: {exc.strerror}")
            return None
        try:
            doc = decode_desired(payload)
            wants_of(doc, self.device)
        except (PayloadError, RejectedDesiredError) as exc:
            self._set_aside(str(exc))
            return None
        return doc

    def save(self, doc: Desired) -> None:
        """Persist `doc` atomically (`runtime.files.atomic_write`)."""
        atomic_write(self.path, encode_desired(doc))

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(DESIRED_FILE + CORRUPT_SUFFIX)
        try:
            self.path.replace(aside)
        except OSError as exc:
            log.warning(
                "persisted desired state unusable (%s) and cannot be set aside: %s",
                why,
                exc.strerror,
                extra={"device": self.device, "reason": "corrupt_state"},
            )
            return
        log.warning(
            "persisted desired state unusable (%s); moved to %s, starting with nothing",
            why,
            aside,
            extra={"device": self.device, "reason": "corrupt_state"},
        )
