"""`devicefabric broker ...`: `run` starts the embedded broker; other commands plug in here.

`register` adds the `broker` command with its own subcommands (`dest="broker_command"`): `run`
is defined here, and `broker.mosquitto_cli.register(broker_subparsers)` adds
`mosquitto-config` when that module exists. amqtt is imported only inside `_run`, so
`devicefabric --help` works on a bare (agent-only) install.

`broker run` prints one ready line to stdout once the port accepts connections
(`broker listening on mqtt://HOST:PORT`), and shuts down cleanly on SIGTERM/SIGINT (a second
signal forces exit). Its flags are generated from `broker.settings.BrokerSettings`, each also
read from `DEVICEFABRIC_<FLAG>`; the secret comes from `--secret-file`, else
`DEVICEFABRIC_SECRET`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

from devicefabric.broker.errors import BrokerConfigError
from devicefabric.broker.settings import BrokerSettings
from devicefabric.runtime.lifecycle import run_program
from devicefabric.runtime.settings import add_command, add_command_group

_EXTENSIONS = ("devicefabric.broker.mosquitto_cli", "devicefabric.broker.nats_cli")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = add_command_group(
        sub,
        "broker",
        help="the embedded MQTT broker and mosquitto config generator",
        description="The embedded MQTT broker, and config for a production mosquitto.",
    )
    register_run(commands)
    for name in _EXTENSIONS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(commands)


def register_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        commands,
        "run",
        BrokerSettings,
        _run,
        help="run the embedded broker (device auth + ACL, hardened amqtt)",
        description=(
            "Run the embedded MQTT 3.1.1 broker: device passwords are recomputed from the fabric "
            "secret, the access rules of the fabric are enforced on publish, subscribe, will and "
            "every delivery. Prints 'broker listening on URL' once ready."
        ),
    )


def _run(settings: BrokerSettings) -> int:
    try:
        from devicefabric.broker.embedded import EmbeddedBroker  # noqa: PLC0415
    except ImportError as exc:
        raise BrokerConfigError(
            "broker run", f"needs amqtt: pip install 'devicefabric[broker]' ({exc})"
        ) from exc

    async def main() -> None:
        async with EmbeddedBroker(settings) as broker:
            print(f"broker listening on {broker.url}", flush=True)
            await broker.serve_forever()

    return run_program(main)
