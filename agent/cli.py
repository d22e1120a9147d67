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
from devicefabric.runtime.settings import add_command, add_command_group


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = add_command_group(sub, "agent", help="the device agent")
    add_command(
        verbs,
        "run",
        AgentSettings,
        _run,
        help="run the device agent",
        description="Connect to the fabric's broker as one device and run its desired processes.",
    )


def _run(settings: AgentSettings) -> int:
    agent = Agent(settings)
    try:
        return run_program(agent.run)
    except (LoginRefusedError, StateDirError) as exc:
        raise ConfigError(str(exc)) from exc
