"""`devicefabric bridge run`.

`bridge run` builds `BridgeSettings` from flags (each also read from `DEVICEFABRIC_<FLAG>`),
constructs the control-plane backend named by `--control-plane` (imported lazily: the Kubernetes
client is only loaded for `kube`), and runs the `Bridge` until SIGTERM/SIGINT. Configuration
errors (bad URL, unreadable password file, port in use) are one line and exit 2; a broker that
refuses the bridge's login exits 1.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicefabric.bridge.controlplane.base import ControlPlane, FleetPlane
from devicefabric.bridge.controlplane.kube import settings as kube_settings
from devicefabric.config.credentials import read_password_file
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import is_device_name
from devicefabric.config.settings import (
    DEFAULT_EVENT_BURST,
    DEFAULT_EVENT_QPS,
    DEFAULT_STALE_MULTIPLIER,
    DEFAULT_STATE_DIR,
    DEFAULT_WRITE_BURST,
    DEFAULT_WRITE_QPS,
    add_flag,
    parse_broker_url,
    parse_hostport,
)
from devicefabric.runtime.lifecycle import run_program

if TYPE_CHECKING:  # the service (paho, prometheus) loads only when `bridge run` runs
    from devicefabric.bridge.service import BridgeSettings

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bridge = sub.add_parser("bridge", help="the bridge service")
    verbs = bridge.add_subparsers(dest="bridge_command", metavar="COMMAND", required=True)
    run = verbs.add_parser(
        "run",
        help="run the bridge (MQTT <-> control plane)",
        description="Mirror DeviceProcess resources to devices over MQTT and write their status "
        "back on transitions only.",
    )
    add_flag(run, "--broker", default=DEFAULT_BROKER, help="broker URL (mqtt:// or mqtts://)")
    add_flag(run, "--password-file", type=Path, help="file holding the `bridge` user's password")
    add_flag(run, "--tls-ca", type=Path, help="CA bundle to verify an mqtts:// broker")
    add_flag(
        run,
        "--client-id",
        help="MQTT client id (default bridge_<POD_NAME or hostname>_<random>, unique per process)",
    )
    add_flag(
        run,
        "--control-plane",
        default="kube",
        choices=("kube", "local"),
        help="where DeviceProcess resources live",
    )
    add_flag(
        run,
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="local control plane: the state directory",
    )
    add_flag(run, "--namespace", help="kube control plane: watch one namespace (default all)")
    kube_settings.add_flags(run.add_argument_group("kube control plane: leader election"))
    add_flag(run, "--http", default="127.0.0.1:8080", help="HOST:PORT of /healthz /readyz /metrics")
    add_budget_flags(run)
    add_flag(
        run,
        "--stale-multiplier",
        type=float,
        default=float(DEFAULT_STALE_MULTIPLIER),
        help="HeartbeatTimeout after this many heartbeat periods of silence",
    )
    add_flag(
        run,
        "--mqtt-down-limit",
        type=float,
        default=120.0,
        help="seconds the MQTT link may stay down before /healthz fails",
    )
    run.set_defaults(func=_run)


def make_control_plane(
    kind: str, state_dir: Path, namespace: str | None, kube_flags: dict[str, Any] | None = None
) -> ControlPlane:
    """The backend named by `--control-plane` (imported lazily)."""
    if kind == "local":
        from devicefabric.bridge.controlplane.local.plane import LocalControlPlane  # noqa: PLC0415

        shards = (kube_flags or {}).get("shards")
        if shards not in (None, 1):
            raise ConfigError(
                f"--shards {shards}: the local control plane has no Leases to share devices "
                "over; one local bridge writes every device (use --control-plane kube to shard)"
            )

        return LocalControlPlane(state_dir)
    if kind == "kube":
        try:
            kube = importlib.import_module("devicefabric.bridge.controlplane.kube.plane")
        except ImportError as exc:
            raise ConfigError(
                f"--control-plane kube: the Kubernetes backend is not available ({exc}); "
                "install devicefabric[bridge]"
            ) from None
        settings = kube_settings.KubeSettings.from_env(namespace, **(kube_flags or {}))
        plane: ControlPlane = kube.KubeControlPlane(namespace=namespace, settings=settings)
        return plane
    raise ConfigError(f"--control-plane: expected kube or local, got {kind!r}")


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    """`--write-qps/--write-burst` (status patches) and `--event-qps/--event-burst` (Events)."""
    add_flag(
        parser,
        "--write-qps",
        type=float,
        default=DEFAULT_WRITE_QPS,
        help=f"status writes per second (default {DEFAULT_WRITE_QPS:g})",
    )
    add_flag(
        parser,
        "--write-burst",
        type=int,
        default=DEFAULT_WRITE_BURST,
        help=f"status writes at once before the rate applies (default {DEFAULT_WRITE_BURST})",
    )
    add_flag(
        parser,
        "--event-qps",
        type=float,
        default=DEFAULT_EVENT_QPS,
        help=f"Events per second, a budget apart from status writes (default {DEFAULT_EVENT_QPS:g})",
    )
    add_flag(
        parser,
        "--event-burst",
        type=int,
        default=DEFAULT_EVENT_BURST,
        help=f"Events at once before their rate applies (default {DEFAULT_EVENT_BURST})",
    )


def check_budgets(args: argparse.Namespace) -> None:
    """The budget flags' values, checked (a `ConfigError` naming the flag)."""
    if args.write_qps <= 0 or args.write_burst < 1:
        raise ConfigError("--write-qps must be > 0 and --write-burst >= 1")
    if args.event_qps <= 0 or args.event_burst < 1:
        raise ConfigError("--event-qps must be > 0 and --event-burst >= 1")


def settings_from_args(args: argparse.Namespace) -> BridgeSettings:
    from devicefabric.bridge.service import BridgeSettings, default_client_id  # noqa: PLC0415

    if args.password_file is None:
        raise ConfigError("--password-file is required (the `bridge` user's password)")
    client_id = args.client_id or default_client_id()
    if is_device_name(client_id):
        raise ConfigError(f"--client-id: {client_id!r} is a device name; a bridge may not use one")
    check_budgets(args)
    if args.stale_multiplier <= 1:
        raise ConfigError("--stale-multiplier must be > 1")
    if not args.mqtt_down_limit > 0:
        raise ConfigError(f"--mqtt-down-limit must be > 0, got {args.mqtt_down_limit}")
    return BridgeSettings(
        broker=parse_broker_url(args.broker),
        password=read_password_file(args.password_file),
        client_id=client_id,
        http=parse_hostport(args.http, "--http") if args.http else None,
        tls_ca=args.tls_ca,
        write_qps=args.write_qps,
        write_burst=args.write_burst,
        event_qps=args.event_qps,
        event_burst=args.event_burst,
        stale_multiplier=args.stale_multiplier,
        mqtt_down_limit=args.mqtt_down_limit,
    )


def _run(args: argparse.Namespace) -> int:
    from devicefabric.bridge.service import Bridge  # noqa: PLC0415

    settings = settings_from_args(args)
    control_plane = make_control_plane(
        args.control_plane, args.state_dir, args.namespace, kube_settings.flag_values(args)
    )

    # Both backends carry their fleet kinds (Devices, DeviceProcessSets) as `.fleet`.
    fleet: FleetPlane | None = getattr(control_plane, "fleet", None)

    async def main() -> int:
        await Bridge(settings, control_plane, fleet=fleet).run()
        return 0

    return run_program(main)
