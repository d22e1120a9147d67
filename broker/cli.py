"""`devicefabric broker ...`: `run` starts the embedded broker; other commands plug in here.

`register` adds the `broker` command with its own subcommands (`dest="broker_command"`): `run`
is defined here, and `broker.mosquitto_cli.register(broker_subparsers)` adds
`mosquitto-config` when that module exists. amqtt is imported only inside `_run`, so
`devicefabric --help` works on a bare (agent-only) install.

`broker run` prints one ready line to stdout once the port accepts connections
(`broker listening on mqtt://HOST:PORT`), and shuts down cleanly on SIGTERM/SIGINT (a second
signal forces exit). Every flag also reads `DEVICEFABRIC_<FLAG>`; the secret comes from
`--secret-file`, else `DEVICEFABRIC_SECRET`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

from devicefabric.broker.errors import BrokerConfigError
from devicefabric.config.credentials import load_secret
from devicefabric.config.settings import DEFAULT_MQTT, add_flag, parse_hostport
from devicefabric.config.topics import DEFAULT_ROOT
from devicefabric.config.wire import MAX_PAYLOAD_BYTES
from devicefabric.runtime.lifecycle import run_program

_EXTENSIONS = ("devicefabric.broker.mosquitto_cli", "devicefabric.broker.nats_cli")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = sub.add_parser(
        "broker",
        help="the embedded MQTT broker and mosquitto config generator",
        description="The embedded MQTT broker, and config for a production mosquitto.",
    )
    commands = broker.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)
    register_run(commands)
    for name in _EXTENSIONS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(commands)


def register_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run the embedded broker (device auth + ACL, hardened amqtt)",
        description=(
            "Run the embedded MQTT 3.1.1 broker: device passwords are recomputed from the fabric "
            "secret, the access rules of the fabric are enforced on publish, subscribe, will and "
            "every delivery. Prints 'broker listening on URL' once ready."
        ),
    )
    add_flag(run, "--mqtt", default=DEFAULT_MQTT, help="listen address HOST:PORT (port 0: any)")
    add_flag(run, "--secret-file", type=Path, help="file holding the fabric secret")
    add_flag(
        run,
        "--revoked-file",
        type=Path,
        help="revoked device names, one per line; re-read when it changes",
    )
    add_flag(run, "--tls-cert", type=Path, help="PEM certificate chain: the listener speaks TLS")
    add_flag(run, "--tls-key", type=Path, help="PEM private key of --tls-cert")
    add_flag(run, "--root", default=DEFAULT_ROOT, help="topic root")
    add_flag(
        run,
        "--max-payload",
        type=int,
        default=MAX_PAYLOAD_BYTES,
        help="largest PUBLISH payload in bytes; a larger one closes the client's connection",
    )
    add_max_connections(run)
    run.set_defaults(func=_run)


def add_max_connections(parser: argparse.ArgumentParser) -> None:
    """`--max-connections` (shared with `devicefabric up`)."""
    add_flag(
        parser,
        "--max-connections",
        type=int,
        default=10_000,
        help="MQTT connections held at once; more are closed on accept "
        "(also kept below the descriptor limit)",
    )


def _run(args: argparse.Namespace) -> int:
    try:
        from devicefabric.broker.embedded import BrokerSettings, EmbeddedBroker  # noqa: PLC0415
    except ImportError as exc:
        raise BrokerConfigError(
            "broker run", f"needs amqtt: pip install 'devicefabric[broker]' ({exc})"
        ) from exc
    settings = BrokerSettings(
        secret=load_secret(args.secret_file),
        mqtt=parse_hostport(args.mqtt, "--mqtt"),
        revoked_file=args.revoked_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        root=args.root,
        max_payload=args.max_payload,
        max_connections=args.max_connections,
    )

    async def main() -> None:
        async with EmbeddedBroker(settings) as broker:
            print(f"broker listening on {broker.url}", flush=True)
            await broker.serve_forever()

    return run_program(main)
