"""`devicefabric broker mosquitto-config`: write the production mosquitto config from the rule table.

Registered under `devicefabric broker` by `broker.cli.register`. It reads the device list (one
name per line), the optional revocation list and the fabric secret, and writes `mosquitto.conf`
and `dynamic-security.json` into `--out` (see `broker.mosquitto` for what they hold). Every
input error is a `ConfigError` naming the flag, file and line: exit code 2 with one line. Nothing
here imports amqtt: generating the config needs no embedded broker.

The flags are generated from `MosquittoConfigSettings`; `GeneratorInputs`, the files every
config generator reads, is shared with `broker.nats_cli`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
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
from devicefabric.broker.settings import secret_setting
from devicefabric.config.settings import DEFAULT_MQTT, HostPort
from devicefabric.config.topics import DEFAULT_ROOT
from devicefabric.runtime.settings import (
    add_command,
    address_setting,
    integer,
    optional,
    path,
    path_setting,
    setting,
)


def register(broker_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        broker_subparsers,
        "mosquitto-config",
        MosquittoConfigSettings,
        run,
        help="write mosquitto.conf and its dynamic-security JSON for a real mosquitto",
        description=(
            "Generate a production mosquitto configuration from the fabric's access rules: "
            f"mosquitto.conf (one listener, no anonymous access) and {DYNSEC_NAME} for "
            "mosquitto's dynamic-security plugin (one client and role per device, the bridge "
            "and observer users). See docs/mosquitto.md."
        ),
    )


def _names(value: str, flag: str) -> tuple[str, ...]:  # noqa: ARG001
    return read_name_list(Path(value)) if value else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorInputs:
    """What every broker config generator reads (`mosquitto-config`, `nats-config`)."""

    out: Path = setting(
        "--out", "directory to write into (created)", parse=path, metavar="DIR", required=True
    )
    devices: tuple[str, ...] = setting(
        "--devices",
        "file with one device name per line",
        parse=_names,
        metavar="FILE",
        required=True,
    )
    secret: bytes = secret_setting(metavar="FILE")
    revoked: tuple[str, ...] = setting(
        "--revoked-file",
        "file with one revoked device name per line (mosquitto: written disabled; NATS: left out)",
        default=(),
        parse=_names,
        metavar="FILE",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MosquittoConfigSettings(GeneratorInputs):
    """`broker mosquitto-config`: the inputs, and what `mosquitto.conf` says besides the rules
    (see `broker.mosquitto.MosquittoSettings` for how each becomes a mosquitto option)."""

    mqtt: HostPort = address_setting(
        "--mqtt",
        "the listener mosquitto opens, HOST:PORT",
        default=DEFAULT_MQTT,
        metavar="HOST:PORT",
    )
    plugin: Path = setting(
        "--plugin",
        "dynamic-security plugin path",
        default=DEFAULT_PLUGIN,
        parse=path,
        metavar="PATH",
    )
    dynsec_path: Path | None = path_setting(
        "--dynsec-path",
        f"absolute path mosquitto reads {DYNSEC_NAME} from, when it is not --out",
        metavar="PATH",
    )
    user: str | None = setting(
        "--user",
        "account mosquitto drops to when started as root (written as `user`; as root, the "
        "generated files are handed to it so mosquitto can read and update them). Default, as "
        "root: mosquitto's own account `mosquitto` when it exists; `--user root` keeps root",
        default_factory=default_user,
        metavar="NAME",
    )
    persistence_dir: Path | None = path_setting(
        "--persistence-dir", "turn persistence on, storing it here (off by default)", metavar="DIR"
    )
    tls_cert: Path | None = path_setting(
        "--tls-cert", "PEM certificate: the listener speaks TLS only", metavar="FILE"
    )
    tls_key: Path | None = path_setting(
        "--tls-key", "PEM private key of --tls-cert", metavar="FILE"
    )
    max_payload: int = setting(
        "--max-payload",
        "largest payload in bytes; mosquitto disconnects a client sending a larger packet",
        default=DEFAULT_MAX_PAYLOAD,
        parse=integer,
        metavar="BYTES",
    )
    max_queued_messages: int | None = setting(
        "--max-queued-messages",
        f"mosquitto's per-client queue bound (default {QUEUE_FLOOR} + "
        f"{QUEUED_PER_DEVICE} x the number of devices: the bridge must receive a whole burst, "
        "e.g. every will of a mass disconnect)",
        default=None,
        parse=optional(integer),
        metavar="N",
    )
    root: str = setting("--root", "topic root", default=DEFAULT_ROOT)


def run(settings: MosquittoConfigSettings) -> int:
    devices, revoked = settings.devices, settings.revoked
    written = generate(
        settings.out,
        devices,
        settings.secret,
        settings.mqtt,
        root=settings.root,
        revoked=revoked,
        plugin=settings.plugin,
        dynsec_file=settings.dynsec_path,
        persistence_dir=settings.persistence_dir,
        user=settings.user,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        max_payload=settings.max_payload,
        max_queued_messages=settings.max_queued_messages,
    )
    unknown = sorted(set(revoked) - set(devices))
    disabled = len(set(revoked) & set(devices))
    print(f"wrote {written.conf}")
    print(f"wrote {written.dynsec} ({len(devices)} devices, {disabled} revoked)")
    if unknown:
        print(f"note: revoked but not listed (nothing to disable): {', '.join(unknown)}")
    print(f"run: mosquitto -c {written.conf}")
    return 0
