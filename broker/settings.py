"""The embedded broker's settings: `devicefabric broker run`'s flags, one field each.

Declared with `runtime.settings.setting`, so `broker run`'s flags (each also read from
`DEVICEFABRIC_<FLAG>`) and their defaults are generated from these fields, and `devicefabric up`
reuses the fields it exposes (`--mqtt`, `--max-connections`) instead of restating them. This
module imports no amqtt: the CLI builds its parser on a bare install. Checks live once, in
`__post_init__`, as a `BrokerConfigError` naming the flag (exit code 2).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devicefabric.broker.errors import BrokerConfigError
from devicefabric.config.credentials import load_secret
from devicefabric.config.errors import TopicError
from devicefabric.config.settings import DEFAULT_MQTT, HostPort
from devicefabric.config.topics import DEFAULT_ROOT, Topics
from devicefabric.config.wire import MAX_PAYLOAD_BYTES
from devicefabric.runtime.settings import address_setting, flag_of, integer, path_setting, setting

DEFAULT_MAX_PAYLOAD: Final = MAX_PAYLOAD_BYTES  # DESIGN.md's payload limit (config)
MAX_MQTT_PACKET: Final = 268_435_455  # MQTT 3.1.1's largest remaining length
DEFAULT_MAX_CONNECTIONS: Final = 10_000
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
_FD_RESERVE: Final = 64


def _secret_file(value: str, flag: str) -> bytes:  # noqa: ARG001
    return load_secret(Path(value))


def _no_secret_file() -> bytes:
    return load_secret(None)  # $DEVICEFABRIC_SECRET, else a one-line "no secret" error


def secret_setting(*, metavar: str | None = None) -> Any:
    """`--secret-file`, the fabric secret every password is derived from, as the programs that
    derive passwords declare it (`broker run`, the config generators)."""
    return setting(
        "--secret-file",
        "file holding the fabric secret (else $DEVICEFABRIC_SECRET, the secret itself)",
        parse=_secret_file,
        program_default=_no_secret_file,
        metavar=metavar,
        repr=False,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """Everything `devicefabric broker run` can set; each field with a flag is one."""

    secret: bytes = secret_setting()
    """The fabric secret every password is derived from."""
    mqtt: HostPort = address_setting(
        "--mqtt", "listen address HOST:PORT (port 0: any)", default=DEFAULT_MQTT
    )
    """Listen address; port 0 binds any free port (see `EmbeddedBroker.port`)."""
    revoked_file: Path | None = path_setting(
        "--revoked-file", "revoked device names, one per line; re-read when it changes"
    )
    tls_cert: Path | None = path_setting(
        "--tls-cert", "PEM certificate chain: the listener speaks TLS"
    )
    """With `tls_key`, the listener speaks only TLS."""
    tls_key: Path | None = path_setting("--tls-key", "PEM private key of --tls-cert")
    root: str = setting("--root", "topic root", default=DEFAULT_ROOT)
    max_payload: int = setting(
        "--max-payload",
        "largest PUBLISH payload in bytes; a larger one closes the client's connection",
        default=DEFAULT_MAX_PAYLOAD,
        parse=integer,
    )
    """Also the largest will payload."""
    max_connections: int = setting(
        "--max-connections",
        "MQTT connections held at once; more are closed on accept "
        "(also kept below the descriptor limit)",
        default=DEFAULT_MAX_CONNECTIONS,
        parse=integer,
    )
    """Capped below the process's descriptor limit (`fd_budget`), so the program keeps
    descriptors for its own files."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    """Seconds from TCP accept to a complete CONNECT (TLS handshake included)."""
    revocation_poll: float = 1.0
    """Seconds between checks of the revocation file for changes."""

    def __post_init__(self) -> None:
        def flag(name: str) -> str:
            return flag_of(BrokerSettings, name).flag

        if (self.tls_cert is None) != (self.tls_key is None):
            raise BrokerConfigError(
                flag("tls_cert"), "--tls-cert and --tls-key must be given together"
            )
        if not 0 < self.max_payload <= MAX_MQTT_PACKET:
            raise BrokerConfigError(
                flag("max_payload"), f"must be between 1 and {MAX_MQTT_PACKET} bytes"
            )
        if self.max_connections < 1:
            raise BrokerConfigError(flag("max_connections"), "must be at least 1")
        try:
            Topics(self.root)
        except TopicError as exc:
            raise BrokerConfigError(flag("root"), str(exc)) from exc


def fd_budget() -> int:
    """Connections the descriptor limit leaves room for, keeping a reserve for the program."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_MQTT_PACKET
    return max(1, soft - max(_FD_RESERVE, soft // 10))
