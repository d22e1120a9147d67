"""`devicefabric broker mosquitto-config`: write the production mosquitto config from the rule table.

Registered under `devicefabric broker` by `broker.cli.register`. It reads the device list (one
name per line), the optional revocation list and the fabric secret, and writes `mosquitto.conf`
and `dynamic-security.json` into `--out` (see `broker.mosquitto` for what they hold). Every
input error is a `ConfigError` naming the flag, file and line: exit code 2 with one line. Nothing
here imports amqtt: generating the config needs no embedded broker.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from devicefabric.broker.mosquitto import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PLUGIN,
    DYNSEC_NAME,
    QUEUE_FLOOR,
    QUEUED_PER_DEVICE,
    default_user,
    generate,
    read_name_list,
)
from devicefabric.config.credentials import load_secret
from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import DEFAULT_MQTT, add_flag, env_name, parse_hostport
from devicefabric.config.topics import DEFAULT_ROOT


def register(broker_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = broker_subparsers.add_parser(
        "mosquitto-config",
        help="write mosquitto.conf and its dynamic-security JSON for a real mosquitto",
        description=(
            "Generate a production mosquitto configuration from the fabric's access rules: "
            f"mosquitto.conf (one listener, no anonymous access) and {DYNSEC_NAME} for "
            "mosquitto's dynamic-security plugin (one client and role per device, the bridge "
            "and observer users). See docs/mosquitto.md."
        ),
    )
    add_input_flags(parser, revoked="written disabled")
    add_flag(
        parser,
        "--mqtt",
        default=DEFAULT_MQTT,
        metavar="HOST:PORT",
        help="the listener mosquitto opens, HOST:PORT",
    )
    add_flag(
        parser,
        "--plugin",
        type=Path,
        default=DEFAULT_PLUGIN,
        metavar="PATH",
        help="dynamic-security plugin path",
    )
    add_flag(
        parser,
        "--dynsec-path",
        type=Path,
        metavar="PATH",
        help=f"absolute path mosquitto reads {DYNSEC_NAME} from, when it is not --out",
    )
    add_flag(
        parser,
        "--user",
        metavar="NAME",
        help="account mosquitto drops to when started as root (written as `user`; as root, the "
        "generated files are handed to it so mosquitto can read and update them). Default, as "
        "root: mosquitto's own account `mosquitto` when it exists; `--user root` keeps root",
    )
    add_flag(
        parser,
        "--persistence-dir",
        type=Path,
        metavar="DIR",
        help="turn persistence on, storing it here (off by default)",
    )
    add_flag(
        parser,
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="PEM certificate: the listener speaks TLS only",
    )
    add_flag(parser, "--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    add_flag(
        parser,
        "--max-payload",
        type=int,
        metavar="BYTES",
        default=DEFAULT_MAX_PAYLOAD,
        help="largest payload in bytes; mosquitto disconnects a client sending a larger packet",
    )
    add_flag(
        parser,
        "--max-queued-messages",
        type=int,
        metavar="N",
        help=f"mosquitto's per-client queue bound (default {QUEUE_FLOOR} + "
        f"{QUEUED_PER_DEVICE} x the number of devices: the bridge must receive a whole burst, "
        "e.g. every will of a mass disconnect)",
    )
    add_flag(parser, "--root", default=DEFAULT_ROOT, help="topic root")
    parser.set_defaults(func=run)


def add_input_flags(parser: argparse.ArgumentParser, *, revoked: str) -> None:
    """`--out`, `--devices`, `--secret-file`, `--revoked-file`: what every config generator reads
    (`revoked` says what becomes of a revoked device in that broker's config)."""
    add_flag(parser, "--out", type=Path, metavar="DIR", help="directory to write into (created)")
    add_flag(
        parser, "--devices", type=Path, metavar="FILE", help="file with one device name per line"
    )
    add_flag(
        parser, "--secret-file", type=Path, metavar="FILE", help="file holding the fabric secret"
    )
    add_flag(
        parser,
        "--revoked-file",
        type=Path,
        metavar="FILE",
        help=f"file with one revoked device name per line ({revoked})",
    )


def required(value: Path | None, flag: str) -> Path:
    """`--out`/`--devices` are required, but may come from their environment variables."""
    if value is None:
        raise ConfigError(f"{flag} is required (or set {env_name(flag)})")
    return Path(value)


def run(args: argparse.Namespace) -> int:
    out = required(args.out, "--out")
    devices = read_name_list(required(args.devices, "--devices"))
    revoked = read_name_list(Path(args.revoked_file)) if args.revoked_file else ()
    secret = load_secret(Path(args.secret_file) if args.secret_file else None)
    written = generate(
        out,
        devices,
        secret,
        parse_hostport(str(args.mqtt), "--mqtt"),
        root=str(args.root),
        revoked=revoked,
        plugin=Path(args.plugin),
        dynsec_file=Path(args.dynsec_path) if args.dynsec_path else None,
        persistence_dir=Path(args.persistence_dir) if args.persistence_dir else None,
        user=args.user if args.user is not None else default_user(),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        max_payload=int(args.max_payload),
        max_queued_messages=(
            int(args.max_queued_messages) if args.max_queued_messages is not None else None
        ),
    )
    unknown = sorted(set(revoked) - set(devices))
    disabled = len(set(revoked) & set(devices))
    print(f"wrote {written.conf}")
    print(f"wrote {written.dynsec} ({len(devices)} devices, {disabled} revoked)")
    if unknown:
        print(f"note: revoked but not listed (nothing to disable): {', '.join(unknown)}")
    print(f"run: mosquitto -c {written.conf}")
    return 0
