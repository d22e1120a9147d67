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
    bridge = which.add_parser("bridge", help="the bridge user's password")
    observer = which.add_parser("observer", help="the read-only observer's password")
    for user in (dev, bridge, observer):
        _secret_flags_after(user)
        user.set_defaults(func=_run)


def _secret_flags_after(parser: argparse.ArgumentParser) -> None:
    """Also accept the secret flags after USER (`creds device NAME --state-dir DIR`).

    SUPPRESS keeps the value given before USER (or its env default) when they are not repeated.
    """
    parser.add_argument(
        "--secret-file", type=Path, default=argparse.SUPPRESS, help="as before USER"
    )
    parser.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help="as before USER")


def _run(args: argparse.Namespace) -> int:
    secret = load_secret(args.secret_file, args.state_dir)
    if args.role == "device":
        print(device_password(secret, args.name))
    else:
        print(role_password(secret, BRIDGE_USER if args.role == "bridge" else OBSERVER_USER))
    return 0
