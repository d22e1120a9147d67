"""The agent's settings: one frozen dataclass, each field its flag, variable, default and check.

Declared with `runtime.settings.setting` (no pydantic in the agent): `agent run`'s flags are
generated from the fields, each flag also read from `DEVICEFABRIC_<FLAG>`, and every check lives
once, in `__post_init__`, with the one-line messages the CLI shows (`--heartbeat: Input should
be ...`): an invalid value raises `InvalidSettingError` naming the field, which the CLI words
with its flag. The password is a `Secret` that never prints itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devicefabric.agent.logbuffer import DEFAULT_BUDGET, MAX_BUDGET, MIN_BUDGET
from devicefabric.agent.logfiles import MAX_FILE_BYTES, MIN_FILE_BYTES
from devicefabric.config.credentials import read_password_file
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import validate_device
from devicefabric.config.settings import DEFAULT_BROKER, DEFAULT_HEARTBEAT_S, BrokerURL
from devicefabric.config.settings import parse_broker_urls as _parse_broker_urls
from devicefabric.config.topics import DEFAULT_ROOT, validate_root
from devicefabric.runtime.settings import (
    InvalidSettingError,
    integer,
    number,
    path,
    setting,
    tls_ca_setting,
)

MAX_HEARTBEAT_S: Final = 86400
MAX_BACKOFF_S: Final = 3600.0

__all__ = ["AgentSettings", "InvalidSettingError", "Secret"]


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that shows as `**********` in reprs and logs."""

    _value: str

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def _brokers(value: str, flag: str) -> tuple[BrokerURL, ...]:
    return tuple(_parse_broker_urls(value, flag))


def _password(value: str, flag: str) -> Secret:  # noqa: ARG001
    return Secret(read_password_file(Path(value)))


def _backoff(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidSettingError(field, "Input should be a valid number")
    if value <= 0:
        raise InvalidSettingError(field, "Input should be greater than 0")
    if value > MAX_BACKOFF_S:
        raise InvalidSettingError(field, f"Input should be less than or equal to {MAX_BACKOFF_S:g}")


def _zero_or_between(field: str, value: int, low: int, high: int) -> None:
    if value != 0 and not low <= value <= high:
        raise InvalidSettingError(field, f"Input should be 0 or between {low} and {high}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Everything the agent needs; `agent run`'s flags are these fields."""

    device: str = setting(
        "--device",
        "this device's name: its MQTT user name, client id and topic level",
        required=True,
    )
    brokers: tuple[BrokerURL, ...] = setting(
        "--broker",
        "broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT; for a clustered broker a "
        "comma-separated list of its nodes, tried in turn after a failed try or a lost connection",
        parse=_brokers,
        program_default=DEFAULT_BROKER,
    )
    password: Secret = setting(
        "--password-file",
        "file holding this device's MQTT password",
        parse=_password,
        required=True,
    )
    state_dir: Path = setting(
        "--state-dir",
        "directory for the persisted desired document (created, mode 0700)",
        parse=path,
        required=True,
    )
    heartbeat_s: int = setting(
        "--heartbeat", "seconds between heartbeats", default=DEFAULT_HEARTBEAT_S, parse=integer
    )
    tls_ca: Path | None = tls_ca_setting()
    allow_command: tuple[str, ...] = setting(
        "--allow-command",
        "only run commands starting with this prefix (repeatable; a word ending in / allows any "
        "program under that directory, symlinks resolved; none given: allow every command, "
        "variable and directory)",
        default=(),
        kind="list",
    )
    allow_env: tuple[str, ...] = setting(
        "--allow-env",
        "with --allow-command: an env variable a spec may set (repeatable; none given: a spec "
        "may set none)",
        default=(),
        kind="list",
    )
    allow_workdir: tuple[str, ...] = setting(
        "--allow-workdir",
        "with --allow-command: a directory a spec's workingDir may be or lie in, symlinks "
        "resolved (repeatable; none given: a spec may not set workingDir)",
        default=(),
        kind="list",
    )
    max_backoff_s: float = setting(
        "--max-backoff", "cap in seconds of the crash-restart back-off", default=10.0, parse=number
    )
    max_reconnect_backoff_s: float = setting(
        "--max-reconnect-backoff",
        "cap in seconds of the reconnect back-off",
        default=30.0,
        parse=number,
    )
    log_buffer_bytes: int = setting(
        "--log-buffer",
        "bytes of each process's newest stdout/stderr lines kept in memory for "
        f"`devicefabric logs` ({MIN_BUDGET}-{MAX_BUDGET}; 0: keep none and let stdout go to the "
        "agent's stdout)",
        default=DEFAULT_BUDGET,
        parse=integer,
    )
    log_file_bytes: int = setting(
        "--log-file",
        "also append each process's stdout and stderr to <state-dir>/logs/"
        "<namespace>_<name>.stdout.log and .stderr.log, each rotated to .1 past this many bytes "
        f"({MIN_FILE_BYTES}-{MAX_FILE_BYTES}; 0: off)",
        default=0,
        parse=integer,
    )
    root: str = setting("--root", "topic root of the fabric", default=DEFAULT_ROOT)

    @property
    def broker(self) -> BrokerURL:
        """The first node of `--broker`: the one tried first."""
        return self.brokers[0]

    @property
    def fallback_brokers(self) -> tuple[BrokerURL, ...]:
        """The list's other nodes, in order."""
        return self.brokers[1:]

    def __post_init__(self) -> None:
        try:
            validate_device(self.device)
        except ConfigError as exc:
            raise InvalidSettingError("device", str(exc)) from None
        if not self.brokers:
            raise InvalidSettingError("brokers", "expected at least one broker URL")
        if self.tls_ca is not None and not self.broker.tls:
            raise InvalidSettingError("tls_ca", "{flag} is only used with an mqtts:// --broker URL")
        if self.heartbeat_s < 1:
            raise InvalidSettingError("heartbeat_s", "Input should be greater than or equal to 1")
        if self.heartbeat_s > MAX_HEARTBEAT_S:
            raise InvalidSettingError(
                "heartbeat_s", f"Input should be less than or equal to {MAX_HEARTBEAT_S}"
            )
        _backoff("max_backoff_s", self.max_backoff_s)
        _backoff("max_reconnect_backoff_s", self.max_reconnect_backoff_s)
        _zero_or_between("log_buffer_bytes", self.log_buffer_bytes, MIN_BUDGET, MAX_BUDGET)
        _zero_or_between("log_file_bytes", self.log_file_bytes, MIN_FILE_BYTES, MAX_FILE_BYTES)
        try:
            validate_root(self.root)
        except ConfigError as exc:
            raise InvalidSettingError("root", str(exc)) from None
