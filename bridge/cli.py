"""`devicefabric bridge run`.

`bridge run`'s flags are generated from `bridge.settings.BridgeSettings` (each also read from
`DEVICEFABRIC_<FLAG>`; the Kubernetes options as the group of its nested `KubeSettings`). It
constructs the control-plane backend named by `--control-plane` (imported lazily: the Kubernetes
client is only loaded for `kube`), and runs the `Bridge` until SIGTERM/SIGINT. Configuration
errors (bad URL, unreadable password file, port in use) are one line and exit 2; a broker that
refuses the bridge's login exits 1.
"""

from __future__ import annotations

import argparse
import importlib

from devicefabric.bridge.controlplane.base import ControlPlane, FleetPlane
from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.settings import BridgeSettings
from devicefabric.config.errors import ConfigError
from devicefabric.runtime.lifecycle import run_program
from devicefabric.runtime.settings import add_command_group, add_settings, flag_of, from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = add_command_group(sub, "bridge", help="the bridge service")
    run = verbs.add_parser(
        "run",
        help="run the bridge (MQTT <-> control plane)",
        description="Mirror DeviceProcess resources to devices over MQTT and write their status "
        "back on transitions only.",
    )
    add_settings(run, BridgeSettings)
    run.set_defaults(func=_run)


def make_control_plane(settings: BridgeSettings) -> ControlPlane:
    """The backend named by `--control-plane` (imported lazily)."""
    kube = settings.kube if settings.kube is not None else KubeSettings.from_env()
    if settings.control_plane == "local":
        from devicefabric.bridge.controlplane.local.plane import LocalControlPlane  # noqa: PLC0415

        if kube.shards != 1:
            raise ConfigError(
                f"{flag_of(KubeSettings, 'shards').flag} {kube.shards}: the local control plane "
                "has no Leases to share devices over; one local bridge writes every device (use "
                "--control-plane kube to shard)"
            )
        return LocalControlPlane(settings.state_dir)
    try:
        plane = importlib.import_module("devicefabric.bridge.controlplane.kube.plane")
    except ImportError as exc:
        raise ConfigError(
            f"--control-plane kube: the Kubernetes backend is not available ({exc}); "
            "install devicefabric[bridge]"
        ) from None
    backend: ControlPlane = plane.KubeControlPlane(namespace=kube.namespace, settings=kube)
    return backend


def settings_from_args(args: argparse.Namespace) -> BridgeSettings:
    """Validate the flags into settings; `ConfigError` naming the flag on any problem."""
    return from_args(BridgeSettings, args)


def _run(args: argparse.Namespace) -> int:
    from devicefabric.bridge.service import Bridge  # noqa: PLC0415

    settings = settings_from_args(args)
    control_plane = make_control_plane(settings)

    # Both backends carry their fleet kinds (Devices, DeviceProcessSets) as `.fleet`.
    fleet: FleetPlane | None = getattr(control_plane, "fleet", None)

    async def main() -> int:
        await Bridge(settings, control_plane, fleet=fleet).run()
        return 0

    return run_program(main)
