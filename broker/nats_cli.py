"""`devicefabric broker nats-config`: write one NATS server config per cluster node from the rules.

Registered under `devicefabric broker` by `broker.cli.register`. It reads the device list (one
name per line), the optional revocation list and the fabric secret, and writes `nats-<k>.conf`
for each node into `--out` (see `broker.nats` for what they hold). Nodes are either `--hosts`
(one node per host, the same ports on each) or `--nodes N` on `--host` (ports base + k, for a
test cluster on one machine). Every input error is a `ConfigError`: exit code 2 with one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from devicefabric.broker.mosquitto import read_name_list
from devicefabric.broker.mosquitto_cli import add_input_flags, required
from devicefabric.broker.nats import (
    CLUSTER_NAME,
    DEFAULT_BCRYPT_ROUNDS,
    bcrypt_hasher,
    generate,
    plan_nodes,
)
from devicefabric.config.credentials import load_secret
from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import add_flag
from devicefabric.config.topics import DEFAULT_ROOT


def register(broker_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = broker_subparsers.add_parser(
        "nats-config",
        help="write NATS server configs (MQTT over JetStream) for a cluster",
        description=(
            "Generate one NATS server config per cluster node from the fabric's access rules: "
            "JetStream, cluster routes, the MQTT listener with replicated streams, one user per "
            "device plus the bridge and observer (bcrypt passwords, MQTT only). See docs/scale.md."
        ),
    )
    add_input_flags(parser, revoked="left out")
    add_flag(parser, "--hosts", metavar="H1,H2,..", help="one node per host (same ports on each)")
    add_flag(parser, "--nodes", type=int, default=3, help="node count on --host (no --hosts)")
    add_flag(parser, "--host", default="127.0.0.1", help="the host of --nodes")
    add_flag(parser, "--client-port", type=int, default=4222, help="NATS client port (base)")
    add_flag(parser, "--cluster-port", type=int, default=6222, help="cluster route port (base)")
    add_flag(parser, "--mqtt-port", type=int, default=1883, help="MQTT port (base)")
    add_flag(
        parser,
        "--store-dir",
        type=Path,
        default=Path("/var/lib/nats"),
        metavar="DIR",
        help="JetStream store root; node k stores under DIR/nats-<k>",
    )
    add_flag(parser, "--bcrypt-rounds", type=int, default=DEFAULT_BCRYPT_ROUNDS, help="bcrypt cost")
    add_flag(parser, "--root", default=DEFAULT_ROOT, help="topic root")
    add_flag(
        parser,
        "--cluster-name",
        default=CLUSTER_NAME,
        help="the NATS cluster's name (routes from a cluster of another name are refused)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = required(args.out, "--out")
    devices = read_name_list(required(args.devices, "--devices"))
    revoked = read_name_list(Path(args.revoked_file)) if args.revoked_file else ()
    secret = load_secret(Path(args.secret_file) if args.secret_file else None)
    if args.hosts:
        hosts = [h.strip() for h in str(args.hosts).split(",") if h.strip()]
    else:
        if int(args.nodes) < 1:
            raise ConfigError(f"--nodes must be at least 1, not {args.nodes}")
        hosts = [str(args.host)] * int(args.nodes)
    if not 4 <= int(args.bcrypt_rounds) <= 31:
        raise ConfigError(f"--bcrypt-rounds must be 4..31, not {args.bcrypt_rounds}")
    base = {"client": args.client_port, "cluster": args.cluster_port, "mqtt": args.mqtt_port}
    nodes = plan_nodes(hosts, base, Path(args.store_dir))
    written = generate(
        out,
        nodes,
        devices,
        secret,
        root=str(args.root),
        revoked=revoked,
        hasher=bcrypt_hasher(int(args.bcrypt_rounds)),
        cluster_name=str(args.cluster_name),
    )
    kept = len(set(devices) - set(revoked))
    for path, node in zip(written, nodes, strict=True):
        print(f"wrote {path} ({node.name}: mqtt {node.mqtt}, {kept} devices)")
    print(f"run on each node: nats-server -c {written[0].parent}/<node>.conf")
    return 0
