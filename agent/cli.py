"""`devicefabric agent run`: flags (each also `DEVICEFABRIC_<FLAG>`) -> `AgentSettings` -> run.

Flag help comes from the `AgentSettings` field descriptions, so a flag, its variable and its doc
cannot drift. Invalid settings, an unusable state directory and a refused login are
configuration errors: one line on stderr and exit code 2 (a refused login is never retried).
A clean shutdown on SIGTERM/SIGINT exits 0; a second signal forces exit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from devicefabric.agent.errors import LoginRefusedError, StateDirError
from devicefabric.agent.logbuffer import DEFAULT_BUDGET
from devicefabric.agent.running import Agent
from devicefabric.agent.settings import HELP, AgentSettings, InvalidSettingError, Secret
from devicefabric.config.credentials import read_password_file
from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_MQTT,
    add_flag,
    parse_broker_urls,
)
from devicefabric.config.topics import DEFAULT_ROOT
from devicefabric.runtime.lifecycle import run_program

# settings field -> flag
FLAGS = {
    "device": "--device",
    "broker": "--broker",
    "password": "--password-file",
    "state_dir": "--state-dir",
    "heartbeat_s": "--heartbeat",
    "tls_ca": "--tls-ca",
    "allow_command": "--allow-command",
    "allow_env": "--allow-env",
    "allow_workdir": "--allow-workdir",
    "max_backoff_s": "--max-backoff",
    "max_reconnect_backoff_s": "--max-reconnect-backoff",
    "log_buffer_bytes": "--log-buffer",
    "log_file_bytes": "--log-file",
    "root": "--root",
}


def _help(field: str) -> str:
    return HELP[field]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="the device agent")
    verbs = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run = verbs.add_parser(
        "run",
        help="run the device agent",
        description="Connect to the fabric's broker as one device and run its desired processes.",
    )
    add_flag(run, "--device", help=_help("device"))
    add_flag(run, "--broker", default=f"mqtt://{DEFAULT_MQTT}", help=_help("broker"))
    add_flag(run, "--password-file", type=Path, help="file holding this device's MQTT password")
    add_flag(run, "--state-dir", type=Path, help=_help("state_dir"))
    add_flag(run, "--heartbeat", type=int, default=DEFAULT_HEARTBEAT_S, help=_help("heartbeat_s"))
    add_flag(run, "--tls-ca", type=Path, help=_help("tls_ca"))
    add_flag(run, "--allow-command", action="append", default=[], help=_help("allow_command"))
    add_flag(run, "--allow-env", action="append", default=[], help=_help("allow_env"))
    add_flag(run, "--allow-workdir", action="append", default=[], help=_help("allow_workdir"))
    add_flag(run, "--max-backoff", type=float, default=10.0, help=_help("max_backoff_s"))
    add_flag(
        run,
        "--max-reconnect-backoff",
        type=float,
        default=30.0,
        help=_help("max_reconnect_backoff_s"),
    )
    add_flag(run, "--log-buffer", type=int, default=DEFAULT_BUDGET, help=_help("log_buffer_bytes"))
    add_flag(run, "--log-file", type=int, default=0, help=_help("log_file_bytes"))
    add_flag(run, "--root", default=DEFAULT_ROOT, help=_help("root"))
    run.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Validate the flags into settings; `ConfigError` naming the flag on any problem."""
    for field in ("device", "password", "state_dir"):
        if getattr(args, FLAGS[field].lstrip("-").replace("-", "_")) is None:
            raise ConfigError(f"{FLAGS[field]} is required")
    broker, *fallbacks = parse_broker_urls(args.broker)
    if args.tls_ca is not None and not broker.tls:
        raise ConfigError("--tls-ca is only used with an mqtts:// --broker URL")
    try:
        return AgentSettings(
            device=args.device,
            broker=broker,
            fallback_brokers=tuple(fallbacks),
            password=Secret(read_password_file(args.password_file)),
            state_dir=args.state_dir,
            heartbeat_s=int(args.heartbeat),
            tls_ca=args.tls_ca,
            allow_command=tuple(args.allow_command),
            allow_env=tuple(args.allow_env),
            allow_workdir=tuple(args.allow_workdir),
            max_backoff_s=float(args.max_backoff),
            max_reconnect_backoff_s=float(args.max_reconnect_backoff),
            log_buffer_bytes=int(args.log_buffer),
            log_file_bytes=int(args.log_file),
            root=args.root,
        )
    except InvalidSettingError as exc:
        raise ConfigError(f"{FLAGS.get(exc.field, exc.field)}: {exc.message}") from None


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    agent = Agent(settings)
    try:
        return run_program(agent.run)
    except (LoginRefusedError, StateDirError) as exc:
        raise ConfigError(str(exc)) from exc
