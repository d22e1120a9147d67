"""`devicefabric broker nats-config`: write one NATS server config per cluster node from the rules.

Registered under `devicefabric broker` by `broker.cli.register`. It reads the device list (one
name per line), the optional revocation list and the fabric secret, and writes `nats-<k>.conf`
for each node into `--out` (see `broker.nats` for what they hold). Nodes are either `--hosts`
(one node per host, the same ports on each) or `--nodes N` on `--host` (ports base + k, for a
test cluster on one machine). Every input error is a `ConfigError`: exit code 2 with one line.
The flags are generated from `NatsConfigSettings` (the shared `GeneratorInputs` first).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from devicefabric.broker.mosquitto_cli import GeneratorInputs
from devicefabric.broker.nats import (
    CLUSTER_NAME,
    DEFAULT_BCRYPT_ROUNDS,
    bcrypt_hasher,
    generate,
    plan_nodes,
)
from devicefabric.config.topics import DEFAULT_ROOT
from devicefabric.runtime.settings import (
    InvalidSettingError,
    add_command,
    integer,
    path,
    setting,
)


def register(broker_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        broker_subparsers,
        "nats-config",
        NatsConfigSettings,
        run,
        help="write NATS server configs (MQTT over JetStream) for a cluster",
        description=(
            "Generate one NATS server config per cluster node from the fabric's access rules: "
            "JetStream, cluster routes, the MQTT listener with replicated streams, one user per "
            "device plus the bridge and observer (bcrypt passwords, MQTT only). See docs/scale.md."
        ),
    )


def _hosts(value: str, flag: str) -> tuple[str, ...]:  # noqa: ARG001
    return tuple(h.strip() for h in value.split(",") if h.strip())


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfigSettings(GeneratorInputs):
    """`broker nats-config`: the inputs, the nodes and their ports, and the server options."""

    hosts: tuple[str, ...] = setting(
        "--hosts",
        "one node per host (same ports on each)",
        default=(),
        parse=_hosts,
        metavar="H1,H2,..",
    )
    nodes: int = setting("--nodes", "node count on --host (no --hosts)", default=3, parse=integer)
    host: str = setting("--host", "the host of --nodes", default="127.0.0.1")
    client_port: int = setting(
        "--client-port", "NATS client port (base)", default=4222, parse=integer
    )
    cluster_port: int = setting(
        "--cluster-port", "cluster route port (base)", default=6222, parse=integer
    )
    mqtt_port: int = setting("--mqtt-port", "MQTT port (base)", default=1883, parse=integer)
    store_dir: Path = setting(
        "--store-dir",
        "JetStream store root; node k stores under DIR/nats-<k>",
        default=Path("/var/lib/nats"),
        parse=path,
        metavar="DIR",
    )
    bcrypt_rounds: int = setting(
        "--bcrypt-rounds", "bcrypt cost", default=DEFAULT_BCRYPT_ROUNDS, parse=integer
    )
    root: str = setting("--root", "topic root", default=DEFAULT_ROOT)
    cluster_name: str = setting(
        "--cluster-name",
        "the NATS cluster's name (routes from a cluster of another name are refused)",
        default=CLUSTER_NAME,
    )

    def __post_init__(self) -> None:
        if not self.hosts and self.nodes < 1:
            raise InvalidSettingError("nodes", f"{{flag}} must be at least 1, not {self.nodes}")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise InvalidSettingError(
                "bcrypt_rounds", f"{{flag}} must be 4..31, not {self.bcrypt_rounds}"
            )


def run(settings: NatsConfigSettings) -> int:
    devices, revoked = settings.devices, settings.revoked
    hosts = settings.hosts or (settings.host,) * settings.nodes
    base = {
        "client": settings.client_port,
        "cluster": settings.cluster_port,
        "mqtt": settings.mqtt_port,
    }
    nodes = plan_nodes(hosts, base, settings.store_dir)
    written = generate(
        settings.out,
        nodes,
        devices,
        settings.secret,
        root=settings.root,
        revoked=revoked,
        hasher=bcrypt_hasher(settings.bcrypt_rounds),
        cluster_name=settings.cluster_name,
    )
    kept = len(set(devices) - set(revoked))
    for conf, node in zip(written, nodes, strict=True):
        print(f"wrote {conf} ({node.name}: mqtt {node.mqtt}, {kept} devices)")
    print(f"run on each node: nats-server -c {written[0].parent}/<node>.conf")
    return 0
