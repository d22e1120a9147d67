"""`--allow-command`, `--allow-env`, `--allow-workdir`: what this device agrees to run.

With no `--allow-command` every spec is run as given (the fabric's ACLs already limit who may
write a device's `desired`). With it, the agent runs a spec only when all three hold:

1. Its `command` (an argv list) starts with the words of some `--allow-command PREFIX` (split
   like a shell line): every word but the last must equal the command's word at that position;
   the last word must equal it too, unless it ends with `/`: then it names a directory and the
   command's word must be an absolute path whose real path (`os.path.realpath`: every symlink
   and `..` resolved as the kernel would) lies inside the directory's real path. So neither
   `/opt/fleet/../../bin/sh` nor `/opt/fleet/link/../sh` with `link` pointing elsewhere, nor a
   symlink inside the directory to a program outside it, can run.
2. Every `env` name it sets was given with `--allow-env NAME` (exact, case-sensitive). None
   given: a spec may set no variable at all. Variables such as `LD_PRELOAD`, `PATH`,
   `PYTHONWARNINGS` or `BASH_ENV` would otherwise turn an allowed program into any program.
3. Its `workingDir`, when set, has a real path equal to or inside the real path of some
   `--allow-workdir DIR`. None given: a spec may not set `workingDir` (the child runs in the
   agent's own directory). A relative command word is looked up from there.

`--allow-env` and `--allow-workdir` only mean something with `--allow-command`; given alone
they are a configuration error rather than a silent no-op. Real paths are computed when a spec
is checked, not when the flags are parsed, so an allowed directory may be created or moved
later. The check reads the file system (symlinks) but nothing else; refusal messages are
bounded by `MAX_MESSAGE`.

Examples: `/opt/fleet/` allows any program under /opt/fleet; `/usr/bin/python3 -m fleetapp`
allows exactly that interpreter running that module, with any further arguments.
"""

from __future__ import annotations

import os.path
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from devicefabric.config.errors import ConfigError
from devicefabric.config.lean import MAX_MESSAGE


@dataclass(frozen=True, slots=True)
class CommandPolicy:
    """The parsed allow-lists; no `prefixes` means "allow everything"."""

    prefixes: tuple[tuple[str, ...], ...] = ()
    env_names: frozenset[str] = frozenset()
    workdirs: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        raw: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdirs: Sequence[str] = (),
    ) -> CommandPolicy:
        """Parse the flag values; anything unusable is a ConfigError naming its flag."""
        parsed: list[tuple[str, ...]] = []
        for item in raw:
            try:
                words = tuple(shlex.split(item))
            except ValueError as exc:
                raise ConfigError(f"--allow-command: cannot split {item!r}: {exc}") from None
            if not words:
                raise ConfigError("--allow-command: an empty prefix would allow nothing useful")
            parsed.append(words)
        if (env or workdirs) and not parsed:
            flag = "--allow-env" if env else "--allow-workdir"
            raise ConfigError(
                f"{flag} only applies together with --allow-command (without it, every "
                "command, variable and directory is allowed)"
            )
        for name in env:
            if not name or "=" in name or "\x00" in name:
                raise ConfigError(f"--allow-env: {name!r} is not a variable name")
        for directory in workdirs:
            if not directory.startswith("/") or "\x00" in directory:
                raise ConfigError(f"--allow-workdir: {directory!r} is not an absolute path")
        return cls(tuple(parsed), frozenset(env), tuple(workdirs))

    @property
    def allows_everything(self) -> bool:
        return not self.prefixes

    def refusal(
        self,
        command: Sequence[str],
        *,
        env: Sequence[str] = (),
        working_dir: str | None = None,
    ) -> str | None:
        """None when the spec (`command`, its `env` names, `working_dir`) may run, else why not."""
        if self.allows_everything:
            return None
        if not any(_starts_with(command, p) for p in self.prefixes):
            shown = ", ".join(shlex.join(p) for p in self.prefixes)
            message = (
                f"command {shlex.join(command[:1])} refused: it does not start with an allowed "
                f"prefix (--allow-command: {shown})"
            )
        elif denied := sorted({name for name in env if name not in self.env_names}):
            allowed = ", ".join(sorted(self.env_names)) or "none given"
            message = (
                f"env {', '.join(denied)} refused: with --allow-command a spec may only set "
                f"the variables named by --allow-env ({allowed})"
            )
        elif working_dir is not None and not any(
            _inside(working_dir, d, or_equal=True) for d in self.workdirs
        ):
            allowed = ", ".join(self.workdirs) or "none given"
            message = (
                f"workingDir {working_dir!r} refused: with --allow-command it must lie inside "
                f"a directory given by --allow-workdir ({allowed})"
            )
        else:
            return None
        return message[:MAX_MESSAGE]


def _starts_with(command: Sequence[str], prefix: tuple[str, ...]) -> bool:
    if len(command) < len(prefix):
        return False
    *fixed, last = prefix
    if any(word != command[i] for i, word in enumerate(fixed)):
        return False
    given = command[len(fixed)]
    if last.endswith("/"):
        return given.startswith("/") and _inside(given, last, or_equal=False)
    return given == last


def _inside(path: str, directory: str, *, or_equal: bool) -> bool:
    """Whether the real path of `path` is (equal to or) below the real path of `directory`."""
    real = os.path.realpath(path)
    top = os.path.realpath(directory)
    if real == top:
        return or_equal
    return real.startswith(top if top.endswith("/") else top + "/")
