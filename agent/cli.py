"""`devicefabric agent run`: flags generated from `AgentSettings` -> settings -> run.

Each flag is a field of `AgentSettings` (and reads `DEVICEFABRIC_<FLAG>`), so a flag, its
variable, its default and its doc cannot drift. Invalid settings, an unusable state directory
and a refused login are configuration errors: one line on stderr and exit code 2 (a refused
login is never retried). A clean shutdown on SIGTERM/SIGINT exits 0; a second signal forces exit.
"""

from __future__ import annotations

import argparse

from devicefabric.agent.errors import LoginRefusedError, StateDirError
from devicefabric.agent.running import Agent
from devicefabric.agent.settings import AgentSettings
from devicefabric.config.errors import ConfigError
from devicefabric.runtime.lifecycle import run_program
from devicefabric.runtime.settings import add_settings, from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="the device agent")
    verbs = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run = verbs.add_parser(
        "run",
        help="run the device agent",
        description="Connect to the fabric's broker as one device and run its desired processes.",
    )
    add_settings(run, AgentSettings)
    run.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Validate the flags into settings; `ConfigError` naming the flag on any problem."""
    return from_args(AgentSettings, args)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    agent = Agent(settings)
    try:
        return run_program(agent.run)
    except (LoginRefusedError, StateDirError) as exc:
        raise ConfigError(str(exc)) from exc
