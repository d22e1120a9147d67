"""`--allow-command`: which commands this device agrees to run (pure).

With no prefix given every command is allowed (the fabric's ACLs already limit who may write a
device's `desired`). Each `--allow-command PREFIX` is split like a shell line into words; a command
(an argv list) is allowed when it starts with the words of some prefix:

- every word but the last must equal the command's word at that position;
- the last word must equal it too, unless it ends with `/`: then it names a directory and the
  command's word must be an absolute path inside it after normalisation (`/opt/app/../../bin/sh`
  is `/bin/sh`, so `..` cannot climb out).

Examples: `/opt/fleet/` allows any program under /opt/fleet; `/usr/bin/python3 -m fleetapp`
allows exactly that interpreter running that module, with any further arguments.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from devicefabric.config.errors import ConfigError
from devicefabric.config.lean import MAX_MESSAGE


@dataclass(frozen=True, slots=True)
class CommandPolicy:
    """The parsed `--allow-command` prefixes; empty means "allow everything"."""

    prefixes: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def parse(cls, raw: Sequence[str]) -> CommandPolicy:
        """Parse the flag values; a prefix that is empty or not shell-splittable is a ConfigError."""
        parsed: list[tuple[str, ...]] = []
        for item in raw:
            try:
                words = tuple(shlex.split(item))
            except ValueError as exc:
                raise ConfigError(f"--allow-command: cannot split {item!r}: {exc}") from None
            if not words:
                raise ConfigError("--allow-command: an empty prefix would allow nothing useful")
            parsed.append(words)
        return cls(tuple(parsed))

    @property
    def allows_everything(self) -> bool:
        return not self.prefixes

    def refusal(self, command: Sequence[str]) -> str | None:
        """None when `command` may run, else the message to report (bounded)."""
        if self.allows_everything or any(_starts_with(command, p) for p in self.prefixes):
            return None
        shown = ", ".join(shlex.join(p) for p in self.prefixes)
        message = (
            f"command {shlex.join(command[:1])} refused: it does not start with an allowed "
            f"prefix (--allow-command: {shown})"
        )
        return message[:MAX_MESSAGE]


def _starts_with(command: Sequence[str], prefix: tuple[str, ...]) -> bool:
    if len(command) < len(prefix):
        return False
    *fixed, last = prefix
    if any(word != command[i] for i, word in enumerate(fixed)):
        return False
    given = command[len(fixed)]
    if last.endswith("/"):
        if not given.startswith("/"):
            return False
        directory = posixpath.normpath(last).rstrip("/") + "/"
        return posixpath.normpath(given).startswith(directory)
    return given == last
