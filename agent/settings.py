"""The agent's settings: a frozen dataclass with explicit checks (no pydantic in the agent).

The device agent must stay small, so its settings are checked by hand here with the same rules
and one-line messages the CLI shows (`--heartbeat: Input should be ...`): an invalid value raises
`InvalidSettingError` naming the field, which the CLI maps to its flag. `HELP` holds each field's
description, the source of the flag help. The password is a `Secret` that never prints itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devicefabric.agent.logbuffer import DEFAULT_BUDGET, MAX_BUDGET, MIN_BUDGET
from devicefabric.agent.logfiles import MAX_FILE_BYTES, MIN_FILE_BYTES
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import validate_device
from devicefabric.config.settings import DEFAULT_HEARTBEAT_S, BrokerURL
from devicefabric.config.topics import DEFAULT_ROOT, validate_root

HELP: Final = {
    "device": "this device's name: its MQTT user name, client id and topic level",
    "broker": "broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT; for a clustered broker a "
    "comma-separated list of its nodes, tried in turn after a failed try or a lost connection",
    "password": "this device's MQTT password",
    "state_dir": "directory for the persisted desired document (created, mode 0700)",
    "heartbeat_s": "seconds between heartbeats",
    "tls_ca": "CA bundle to verify an mqtts:// broker (default: the system's)",
    "allow_command": "only run commands starting with this prefix (repeatable; a word ending "
    "in / allows any program under that directory, symlinks resolved; none given: allow every "
    "command, variable and directory)",
    "allow_env": "with --allow-command: an env variable a spec may set (repeatable; none given: "
    "a spec may set none)",
    "allow_workdir": "with --allow-command: a directory a spec's workingDir may be or lie in, "
    "symlinks resolved (repeatable; none given: a spec may not set workingDir)",
    "max_backoff_s": "cap in seconds of the crash-restart back-off",
    "max_reconnect_backoff_s": "cap in seconds of the reconnect back-off",
    "log_buffer_bytes": "bytes of each process's newest stdout/stderr lines kept in memory for "
    f"`devicefabric logs` ({MIN_BUDGET}-{MAX_BUDGET}; 0: keep none and let stdout go to the "
    "agent's stdout)",
    "log_file_bytes": "also append each process's stdout and stderr to <state-dir>/logs/"
    "<namespace>_<name>.stdout.log and .stderr.log, each rotated to .1 past this many bytes "
    "(65536-1073741824; 0: off)",
    "root": "topic root of the fabric",
}
MAX_HEARTBEAT_S: Final = 86400
MAX_BACKOFF_S: Final = 3600.0


class InvalidSettingError(ConfigError):
    """A setting out of its range; `field` names it, `message` says why (one line)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that shows as `**********` in reprs and logs."""

    _value: str

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def _backoff(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidSettingError(field, "Input should be a valid number")
    if value <= 0:
        raise InvalidSettingError(field, "Input should be greater than 0")
    if value > MAX_BACKOFF_S:
        raise InvalidSettingError(field, f"Input should be less than or equal to {MAX_BACKOFF_S:g}")


def _log_buffer(value: int) -> None:
    field = "log_buffer_bytes"
    if type(value) is not int:
        raise InvalidSettingError(field, "Input should be a valid integer")
    if value != 0 and not MIN_BUDGET <= value <= MAX_BUDGET:
        raise InvalidSettingError(
            field, f"Input should be 0 or between {MIN_BUDGET} and {MAX_BUDGET}"
        )


def _log_file(value: int) -> None:
    field = "log_file_bytes"
    if type(value) is not int:
        raise InvalidSettingError(field, "Input should be a valid integer")
    if value != 0 and not MIN_FILE_BYTES <= value <= MAX_FILE_BYTES:
        raise InvalidSettingError(
            field, f"Input should be 0 or between {MIN_FILE_BYTES} and {MAX_FILE_BYTES}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Everything the agent needs; the CLI builds it from flags (help in `HELP`)."""

    device: str
    broker: BrokerURL
    password: Secret
    fallback_brokers: tuple[BrokerURL, ...] = ()  # the list's other nodes, in order
    state_dir: Path
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    tls_ca: Path | None = None
    allow_command: tuple[str, ...] = ()
    allow_env: tuple[str, ...] = ()
    allow_workdir: tuple[str, ...] = ()
    max_backoff_s: float = 10.0
    max_reconnect_backoff_s: float = 30.0
    log_buffer_bytes: int = DEFAULT_BUDGET
    log_file_bytes: int = 0  # 0: no file; see HELP
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        try:
            validate_device(self.device)
        except ConfigError as exc:
            raise InvalidSettingError("device", str(exc)) from None
        if type(self.heartbeat_s) is not int:
            raise InvalidSettingError("heartbeat_s", "Input should be a valid integer")
        if self.heartbeat_s < 1:
            raise InvalidSettingError("heartbeat_s", "Input should be greater than or equal to 1")
        if self.heartbeat_s > MAX_HEARTBEAT_S:
            raise InvalidSettingError(
                "heartbeat_s", f"Input should be less than or equal to {MAX_HEARTBEAT_S}"
            )
        _backoff("max_backoff_s", self.max_backoff_s)
        _backoff("max_reconnect_backoff_s", self.max_reconnect_backoff_s)
        _log_buffer(self.log_buffer_bytes)
        _log_file(self.log_file_bytes)
        try:
            validate_root(self.root)
        except ConfigError as exc:
            raise InvalidSettingError("root", str(exc)) from None
