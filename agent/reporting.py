"""When to publish a report, and what it says (pure).

A report is the level-based picture of every applied entry: `{session, seq, revision,
processes}`. The agent calls `ReportBook.next()` whenever something may have changed (a process
changed state, a document was applied, a connection came up); it returns a report only when the
picture differs from the last one published in this session, so a report is published at once
on every change, never on a timer and never twice for the same picture.

Invariants: `seq` counts the reports of one session from 1; a new session (a new connection)
always gets a first report, so the retained report carries the live session; keys are the
applied document's `<namespace>/<name>`; `revision` is the applied document's revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from devicefabric.config import lean


@dataclass(frozen=True, slots=True)
class Report:
    """One report document; `encode()` gives its canonical wire bytes."""

    session: str
    seq: int
    revision: str
    processes: dict[str, dict[str, object]]

    def encode(self) -> bytes:
        return lean.encode_report(self.session, self.seq, self.revision, self.processes)


class ReportBook:
    """Remembers the last report of the current session; see the module docstring."""

    def __init__(self) -> None:
        self._session: str | None = None
        self._seq = 0
        self._last: tuple[str, dict[str, lean.ProcessStatus]] | None = None

    def next(
        self, session: str, revision: str, states: Mapping[str, lean.ProcessStatus]
    ) -> Report | None:
        """The report to publish now, or None when this session already has this picture."""
        if session != self._session:
            self._session, self._seq, self._last = session, 0, None
        picture = (revision, dict(states))
        if picture == self._last:
            return None
        self._last = picture
        self._seq += 1
        return Report(
            session=session,
            seq=self._seq,
            revision=revision,
            processes={key: states[key].to_wire() for key in sorted(states)},
        )
