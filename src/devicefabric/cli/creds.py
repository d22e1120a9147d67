"""`devicefabric creds device NAME | bridge | observer`: print a password derived from the secret."""

from __future__ import annotations

import argparse
from pathlib import Path

from devicefabric.config.credentials import device_password, load_secret, role_password
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from devicefabric.config.settings import add_flag


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "creds",
        help="print a user's MQTT password derived from the fabric secret",
        description="Print the MQTT password of a device or role user, derived from the secret.",
    )
    add_flag(parser, "--secret-file", type=Path, help="file holding the fabric secret")
    add_flag(
        parser,
        "--state-dir",
        type=Path,
        help="read the secret from this state directory (as created by `devicefabric up`)",
    )
    which = parser.add_subparsers(dest="role", metavar="USER", required=True)
    dev = which.add_parser("device", help="a device's password")
    dev.add_argument("name", help="device name (DNS-1123 label)")
    dev.set_defaults(func=_run)
    which.add_parser("bridge", help="the bridge user's password").set_defaults(func=_run)
    which.add_parser("observer", help="the read-only observer's password").set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    secret = load_secret(args.secret_file, args.state_dir)
    if args.role == "device":
        print(device_password(secret, args.name))
    else:
        print(role_password(secret, BRIDGE_USER if args.role == "bridge" else OBSERVER_USER))
    return 0
