"""`devicefabric creds device NAME | bridge | observer`: print a password derived from the secret.

A password on a command line (`mosquitto_sub -P "$(devicefabric creds observer)"`) is shown by
`ps` to every local user. So `creds observer --mosquitto-options DIR` prints nothing and writes
`DIR/mosquitto_sub` instead (DIR created with mode 0700, the file 0600, replaced atomically): the
observer's login as the mosquitto clients' own options file, one `-option value` per line. The
clients read that file from `$XDG_CONFIG_HOME/mosquitto_sub`, so

    XDG_CONFIG_HOME=DIR mosquitto_sub -h HOST -p PORT -I observer_ -t 'fabric/v1/#' -v

logs in as the observer with no password in its arguments. A file there that devicefabric did
not write (its first line is not ours) is never replaced: that is a configuration error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devicefabric.config.credentials import device_password, load_secret, role_password
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from devicefabric.runtime.settings import (
    add_settings,
    from_args,
    path_setting,
)

MOSQUITTO_SUB: Final = "mosquitto_sub"  # the file name the clients look for in XDG_CONFIG_HOME
HEADER: Final = "# devicefabric creds observer: the observer's login for mosquitto_sub"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "creds",
        help="print a user's MQTT password derived from the fabric secret",
        description="Print the MQTT password of a device or role user, derived from the secret.",
    )
    add_settings(parser, CredsSettings, only=SECRET_FIELDS)
    which = parser.add_subparsers(dest="role", metavar="USER", required=True)
    dev = which.add_parser("device", help="a device's password")
    dev.add_argument("name", help="device name (DNS-1123 label)")
    bridge = which.add_parser("bridge", help="the bridge user's password")
    observer = which.add_parser("observer", help="the read-only observer's password")
    add_settings(observer, CredsSettings, only=("mosquitto_options",))
    for user in (dev, bridge, observer):
        # The secret's flags may also come after USER (`creds device NAME --state-dir DIR`).
        add_settings(user, CredsSettings, only=SECRET_FIELDS, again=True)
        user.set_defaults(func=_run)


@dataclass(frozen=True, slots=True, kw_only=True)
class CredsSettings:
    """`creds`' flags: where the secret is, and where the observer's login goes."""

    secret_file: Path | None = path_setting(
        "--secret-file", "file holding the fabric secret (before or after USER)"
    )
    state_dir: Path | None = path_setting(
        "--state-dir",
        "read the secret from this state directory, as created by `devicefabric up` (before "
        "or after USER)",
    )
    mosquitto_options: Path | None = path_setting(
        "--mosquitto-options",
        "print nothing; write the observer's login to DIR/mosquitto_sub (mode 0600) for "
        "`XDG_CONFIG_HOME=DIR mosquitto_sub ...`, keeping the password out of `ps`",
        metavar="DIR",
    )


SECRET_FIELDS: Final = ("secret_file", "state_dir")


def options_text(user: str, password: str) -> str:
    """The text of a mosquitto client options file logging in as `user`."""
    return f"{HEADER}\n-u {user}\n-P {password}\n"


def write_options(directory: Path, text: str) -> Path:
    """Write `directory/mosquitto_sub` (0600, atomically); ConfigError if it is not ours."""
    path = directory / MOSQUITTO_SUB
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with path.open(encoding="utf-8") as existing:
                first = existing.readline().rstrip("\n")
        except FileNotFoundError:
            first = HEADER
        if first != HEADER:
            raise ConfigError(
                f"--mosquitto-options: {path} exists and was not written by devicefabric; "
                "move it away or choose another directory"
            )
        temporary = directory / f".{MOSQUITTO_SUB}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--mosquitto-options: cannot write {path}: {exc}") from exc
    return path


def _run(args: argparse.Namespace) -> int:
    settings = from_args(CredsSettings, args)
    secret = load_secret(settings.secret_file, settings.state_dir)
    if args.role == "device":
        print(device_password(secret, args.name))
        return 0
    user = BRIDGE_USER if args.role == "bridge" else OBSERVER_USER
    password = role_password(secret, user)
    directory = settings.mosquitto_options if args.role == "observer" else None
    if directory is None:
        print(password)
        return 0
    path = write_options(directory, options_text(user, password))
    print(
        f"wrote the observer's login to {path}: "
        f"XDG_CONFIG_HOME={shlex.quote(str(directory))} mosquitto_sub -I observer_ ...",
        file=sys.stderr,
    )
    return 0
