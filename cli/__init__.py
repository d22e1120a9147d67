"""The `devicefabric` console script: one argparse tree, each program registering its commands.

Each package's `cli` module exposes `register(subparsers)` and imports its heavy dependencies
(amqtt, kubernetes) only inside the command function, so `devicefabric agent run` works on a
bare install. Exit codes: 0 clean, 2 usage or configuration error (one-line reason), 1 runtime
failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NoReturn, cast

from devicefabric import __version__
from devicefabric.config.errors import ConfigError, DeviceFabricError
from devicefabric.config.logs import setup_logging
from devicefabric.runtime.lifecycle import raise_fd_limit
from devicefabric.runtime.settings import add_settings, flags_of, from_args, setting


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other configuration error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    """The options every command takes, before its name: how the program logs."""

    log_format: str | None = setting(
        "--log-format",
        "log line format (text on a terminal, json otherwise)",
        default=None,
        choices=("text", "json"),
    )
    log_level: str = setting("--log-level", "log level (DEBUG, INFO, WARNING...)", default="INFO")


_GLOBAL_VALUED: Final = frozenset(flag.flag for _, flag in flags_of(LogSettings))


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names (the first word that is not a global option), if any."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; for `command="agent"` only the agent's verbs, so that the device agent
    never imports the bridge's and the control planes' libraries (pydantic among them)."""
    from devicefabric.agent import cli as agent_cli  # noqa: PLC0415 - keep `--help` cheap

    parser = _Parser(
        prog="devicefabric",
        description="Kubernetes-driven process management for fleets of edge devices over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"devicefabric {__version__}")
    add_settings(parser, LogSettings)
    # Subparsers are `_Parser`s too (one-line errors); the registrars only need ArgumentParser.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
    )
    if command == "agent":
        agent_cli.register(sub)
        return parser
    from devicefabric.bridge import cli as bridge_cli  # noqa: PLC0415
    from devicefabric.broker import cli as broker_cli  # noqa: PLC0415
    from devicefabric.cli import (  # noqa: PLC0415
        creds,
        fleetverbs,
        logs,
        manifests,
        rollouts,
        status,
        up,
        verbs,
    )

    up.register(sub)
    broker_cli.register(sub)
    bridge_cli.register(sub)
    agent_cli.register(sub)
    creds.register(sub)
    verbs.register(sub)
    fleetverbs.register(sub)
    rollouts.register(sub)
    logs.register(sub)
    manifests.register(sub)
    status.register(sub)
    return parser


EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what a shell reports for a writer cut off


def main(argv: Sequence[str] | None = None) -> int:
    raise_fd_limit()  # every program: the hard limit is what the administrator granted
    try:
        parser = build_parser(command_of(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:  # e.g. a DEVICEFABRIC_<FLAG> variable that does not parse
        print(f"devicefabric: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        logging_settings = from_args(LogSettings, args)
        setup_logging(logging_settings.log_level, logging_settings.log_format)
        code = args.func(args)
    except ConfigError as exc:
        print(f"devicefabric: error: {exc}", file=sys.stderr)
        return 2
    except DeviceFabricError as exc:
        print(f"devicefabric: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `get -o yaml | head`: the reader left; stop quietly, like cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail too
        return EXIT_BROKEN_PIPE
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
