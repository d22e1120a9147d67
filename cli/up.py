"""`devicefabric up`: the embedded default, one process holding the whole fabric of one machine.

    devicefabric up [--state-dir DIR] [--mqtt HOST:PORT] [--http HOST:PORT] [--demo] ...

Creates the state directory and its fabric secret (mode 0600) on first run, then runs in one
event loop, under one TaskGroup with named tasks:

- `broker`: the embedded broker (`broker.embedded.EmbeddedBroker`) on `--mqtt`;
- `bridge`: the bridge service (`bridge.service.Bridge`) on the local control plane
  (`bridge.controlplane.local`: DeviceProcess files under the state directory), logging in as the
  `bridge` user with the password derived from the secret, serving `--http`;
- `frontend`: waits until the bridge is ready, prints how to connect an agent and how to watch
  with `mosquitto_sub` (its password from a 0600 options file, never on a command line); with `--demo`, applies the samples of `cli.demo`, starts their three agents
  and draws the live table.

Invariants: an address in use is a one-line `ConfigError` naming `--mqtt` or `--http` (exit 2),
raised before anything is printed; the first SIGINT/SIGTERM cancels the TaskGroup, so the demo
agents are SIGTERMed and awaited, the bridge says offline, the broker drains, and the program
exits 0; the first error of any task ends the program with that error (not an exception group).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from devicefabric.bridge.settings import BridgeSettings, default_client_id
from devicefabric.broker.settings import BrokerSettings
from devicefabric.config.credentials import load_secret, role_password
from devicefabric.config.errors import ConfigError, DeviceFabricError
from devicefabric.config.logs import JsonFormatter, TextFormatter
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.resource import AGENT_CONNECTED
from devicefabric.config.settings import DEFAULT_STATE_DIR, HostPort, dialable, parse_broker_url
from devicefabric.config.topics import DEFAULT_ROOT
from devicefabric.runtime.lifecycle import run_program
from devicefabric.runtime.settings import (
    add_settings,
    from_args,
    path,
    path_setting,
    setting,
    switch,
)
from devicefabric.runtime.tasks import first_error

if TYPE_CHECKING:  # imported lazily at run time: yaml and amqtt are extras
    from devicefabric.bridge.controlplane.local.plane import LocalControlPlane

log = logging.getLogger("devicefabric.up")

READY_TIMEOUT: Final = 30.0
SETTLE_TIMEOUT: Final = 3.0
EXAMPLE_DEVICE: Final = "edge-1"
OBSERVER_CONFIG_DIR: Final = "observer"  # in the state dir, for `creds --mosquitto-options`
OBSERVER_CLIENT_PREFIX: Final = "observer_"  # the client ids the observer may use


@dataclass(frozen=True, slots=True, kw_only=True)
class UpSettings:
    """`up`'s own flags; the broker's and the bridge's it exposes come from their settings."""

    state_dir: Path = setting(
        "--state-dir",
        "resources, status, events and the fabric secret (created on first run)",
        default=DEFAULT_STATE_DIR,
        parse=path,
    )
    secret_file: Path | None = path_setting(
        "--secret-file", "fabric secret file (default: $DEVICEFABRIC_SECRET, else STATE_DIR/secret)"
    )
    demo: bool = switch(
        "--demo", "also run three local agents with sample processes and show a live table"
    )


# The fields of the programs' settings `up` exposes as its own flags (same names and defaults).
BROKER_FIELDS: Final = ("mqtt", "max_connections")
BRIDGE_FIELDS: Final = ("http", "write_qps", "write_burst", "event_qps", "event_burst")


@dataclass(frozen=True, slots=True)
class UpOptions:
    """What `serve` runs: `up`'s settings, the secret, and the two programs' settings."""

    up: UpSettings
    secret: bytes
    broker: BrokerSettings
    bridge: BridgeSettings  # its broker URL is replaced by the bound address once listening

    @property
    def state_dir(self) -> Path:
        return self.up.state_dir

    http: HostPort  # the bridge's `http`, which `up` always serves


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "up",
        help="embedded broker + bridge on the local control plane",
        description="Run the embedded broker and the bridge on this machine, with DeviceProcess "
        "files under --state-dir as the control plane (see `devicefabric apply/get/delete`).",
    )
    add_settings(parser, UpSettings)
    add_settings(
        parser, BrokerSettings, only=BROKER_FIELDS, helps={"mqtt": "MQTT listen address HOST:PORT"}
    )
    add_settings(
        parser, BridgeSettings, only=BRIDGE_FIELDS, helps={"http": "bridge HTTP address HOST:PORT"}
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    up = from_args(UpSettings, args)
    # Every flag is checked before the state directory and its secret are created.
    broker = from_args(BrokerSettings, args, only=BROKER_FIELDS, secret=b"")
    bridge = from_args(
        BridgeSettings,
        args,
        only=BRIDGE_FIELDS,
        broker=parse_broker_url(f"mqtt://{dialable(broker.mqtt)}"),
        password="",
        client_id=default_client_id(),  # unique per process: not guessable
    )
    http = bridge.http
    if http is None:  # `--http ""`: the bridge's "no server", not for `up`
        raise ConfigError("--http: `up` serves the bridge's endpoints; give HOST:PORT")
    try:
        up.state_dir.mkdir(parents=True, exist_ok=True)
        secret = load_secret(up.secret_file, up.state_dir, create=True)
    except OSError as exc:
        raise ConfigError(f"--state-dir: cannot use {up.state_dir}: {exc.strerror}") from None
    broker = replace(broker, secret=secret)
    bridge = replace(bridge, password=role_password(secret, BRIDGE_USER))
    options = UpOptions(up, secret, broker, bridge, http)
    if up.demo and sys.stdout.isatty():
        _log_to_file(up.state_dir / "up.log")
    return run_program(lambda: serve(options))


async def serve(options: UpOptions) -> None:
    """Broker, bridge and front end until cancelled (see the module docstring)."""
    from devicefabric.bridge.controlplane.local.plane import LocalControlPlane  # noqa: PLC0415
    from devicefabric.bridge.service import Bridge  # noqa: PLC0415
    from devicefabric.broker.embedded import EmbeddedBroker  # noqa: PLC0415

    _check_free(options.http, "--http")  # before the broker logs anything: one line, exit 2
    plane = LocalControlPlane(options.state_dir)
    async with EmbeddedBroker(options.broker) as broker:
        address = dialable(broker.address)
        settings = replace(options.bridge, broker=parse_broker_url(f"mqtt://{address}"))
        bridge = Bridge(settings, plane, fleet=plane.fleet)
        try:
            # The front end runs in this task, inside the group: on Ctrl-C it unwinds first (the
            # demo agents stop and their offline is written) while the bridge task still runs;
            # the group cancels the bridge after. A failing bridge cancels the front end.
            async with asyncio.TaskGroup() as tg:
                tg.create_task(broker.serve_forever(), name="broker")
                tg.create_task(bridge.run(), name="bridge")
                await _frontend(options, bridge.wait_ready, address, plane)
        except BaseExceptionGroup as group:
            raise first_error(group) from None


async def _frontend(
    options: UpOptions,
    ready: Callable[[], Awaitable[None]],
    broker: HostPort,
    plane: LocalControlPlane,
) -> None:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await ready()
    except TimeoutError:
        raise DeviceFabricError(
            f"the bridge did not become ready within {READY_TIMEOUT:.0f} s"
        ) from None
    text = instructions(options, broker)
    if options.up.demo:
        await _demo(options, text, broker, plane)
    else:
        print(text, flush=True)
        await asyncio.Event().wait()  # until Ctrl-C


async def _demo(options: UpOptions, text: str, broker: HostPort, plane: LocalControlPlane) -> None:
    from devicefabric.bridge.controlplane.local.fleet import (  # noqa: PLC0415
        device_store,
        set_store,
    )
    from devicefabric.cli import demo  # noqa: PLC0415
    from devicefabric.cli.verbs import render_table  # noqa: PLC0415

    applied = await asyncio.to_thread(plane.store.apply, demo.sample_manifests())
    devices, sets = demo.sample_fleet()
    applied += await asyncio.to_thread(device_store(options.state_dir).apply, devices)
    applied += await asyncio.to_thread(set_store(options.state_dir).apply, sets)
    log.info("demo resources: %s", ", ".join(f"{a.key} {a.outcome}" for a in applied))
    tty = sys.stdout.isatty()
    if not tty:
        print(text, flush=True)
    header = text + f"\n\nlogs: {options.state_dir / 'up.log'}   (Ctrl-C stops everything)\n"
    agents = demo.DemoAgents(options.state_dir, f"mqtt://{broker}", options.secret)
    try:
        async with agents, asyncio.TaskGroup() as tg:
            tg.create_task(agents.watch(), name="demo-agents")
            tg.create_task(demo.live_table(plane, header if tty else ""), name="live-table")
    finally:
        if tty:
            print("\nstopping: agents, bridge, broker...", flush=True)
        await _settle(plane, agents.devices)
        if tty:
            print(render_table(plane.resources()), flush=True)


async def _settle(plane: LocalControlPlane, devices: tuple[str, ...]) -> None:
    """Give the bridge a moment to record the stopped agents' clean offline (bounded)."""
    from devicefabric.cli.verbs import condition_status  # noqa: PLC0415

    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        if not any(
            condition_status(r, AGENT_CONNECTED) == "True"
            for r in plane.resources()
            if r.device in devices
        ):
            return
        await asyncio.sleep(0.05)


def instructions(options: UpOptions, broker: HostPort) -> str:
    """What to run next: an agent for a device, a resource for it, and a fabric-wide watch."""
    state = shlex.quote(str(options.state_dir))
    secret = (
        f"--secret-file {shlex.quote(str(options.up.secret_file))}"
        if options.up.secret_file is not None
        else f"--state-dir {state}"
    )
    device = EXAMPLE_DEVICE
    password_file = shlex.quote(f"{device}.password")
    agent_state = shlex.quote(f"{device}-state")
    url = f"mqtt://{broker}"
    # The observer's login goes into a 0600 options file the mosquitto clients read: a password
    # on the command line would be shown by `ps` to every local user.
    observer_config = shlex.quote(str(options.state_dir / OBSERVER_CONFIG_DIR))
    topics = shlex.quote(DEFAULT_ROOT + "/#")
    agent = (
        f"  devicefabric agent run --device {device} --broker {url} "
        f"--password-file {password_file} --state-dir {agent_state}"
    )
    watch = (
        f"  XDG_CONFIG_HOME={observer_config} mosquitto_sub -h {shlex.quote(broker.host)} "
        f"-p {broker.port} -I {OBSERVER_CLIENT_PREFIX} -t {topics} -v"
    )
    lines = [
        f"devicefabric is up: broker {url}, bridge http://{options.http}, state {state}",
        "",
        f"Connect an agent (here for device {device}):",
        f"  devicefabric creds device {device} {secret} > {password_file}",
        agent,
        "Run a process on it, and see it:",
        f"  devicefabric apply -f process.yaml --state-dir {state}",
        f"  devicefabric get --state-dir {state}",
        "Watch the whole fabric:",
        f"  devicefabric creds observer {secret} --mosquitto-options {observer_config}",
        watch,
    ]
    return "\n".join(lines)


def _check_free(address: HostPort, flag: str) -> None:
    """A `ConfigError` naming `flag` when `address` cannot be listened on (the bind decides)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        try:
            probe.bind((address.host, address.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{flag}: {address} is already in use; choose another with {flag}"
                ) from None
            raise ConfigError(f"{flag}: cannot listen on {address}: {exc.strerror}") from None


def _log_to_file(path: Path) -> None:
    """Send the log to `path` (the terminal shows the live table); same format as configured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    old = root.handlers[0].formatter if root.handlers else None
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(old if isinstance(old, JsonFormatter | TextFormatter) else TextFormatter())
    root.handlers[:] = [handler]
