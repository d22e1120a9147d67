"""The bridge's settings: `devicefabric bridge run`'s flags, one documented field each.

Declared with `runtime.settings.setting`: `bridge run`'s flags (each also read from
`DEVICEFABRIC_<FLAG>`) and their defaults are generated from `BridgeSettings`, its Kubernetes
options (`controlplane.kube.settings.KubeSettings`) as a nested group; `devicefabric up` reuses
the fields it exposes (`--http`, the write and Event budgets) instead of restating them. Fields
without a flag are tuning a library user (a test, a benchmark) may set. Checks live once, in
`__post_init__`, as `InvalidSettingError`s the CLI words with the flag (exit code 2).

This module is light (no paho, prometheus or kubernetes import): every command builds the
parser, and only `bridge run` loads the service.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from devicefabric.bridge.controlplane.kube.settings import KubeSettings
from devicefabric.bridge.queueing import DEFAULT_KEY_BURST, DEFAULT_MIN_INTERVAL
from devicefabric.config.credentials import read_password_file
from devicefabric.config.names import is_device_name
from devicefabric.config.settings import (
    DEFAULT_BROKER,
    DEFAULT_EVENT_BURST,
    DEFAULT_EVENT_QPS,
    DEFAULT_HTTP,
    DEFAULT_STALE_MULTIPLIER,
    DEFAULT_STATE_DIR,
    DEFAULT_WRITE_BURST,
    DEFAULT_WRITE_QPS,
    BrokerURL,
    HostPort,
    parse_broker_url,
    parse_hostport,
)
from devicefabric.config.topics import DEFAULT_ROOT
from devicefabric.config.wire import MAX_PAYLOAD_BYTES
from devicefabric.runtime.settings import (
    InvalidSettingError,
    group,
    integer,
    number,
    path,
    setting,
    tls_ca_setting,
)


def default_client_id() -> str:
    """`bridge_<POD_NAME or hostname>_<8 random hex>`: unique per process, so nobody can take the
    bridge's session over by guessing its id; short (the host part is cut to 20 characters of
    `[A-Za-z0-9-]`) and never a device name (a device name has no `_`)."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    host = re.sub(r"[^A-Za-z0-9-]", "-", host)[:20] or "host"
    return f"bridge_{host}_{secrets.token_hex(4)}"


def _broker(value: str, flag: str) -> BrokerURL:
    return parse_broker_url(value, flag)


def _password(value: str, flag: str) -> str:  # noqa: ARG001
    return read_password_file(Path(value))


def _http(value: str, flag: str) -> HostPort | None:
    return parse_hostport(value, flag) if value else None


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeSettings:
    """Everything the bridge needs; `bridge run`'s flags are the fields declared with one."""

    broker: BrokerURL = setting(
        "--broker",
        "broker URL (mqtt:// or mqtts://)",
        parse=_broker,
        program_default=DEFAULT_BROKER,
    )
    password: str = setting(
        "--password-file",
        "file holding the `bridge` user's password",
        parse=_password,
        required=True,
        repr=False,
    )
    client_id: str = setting(
        "--client-id",
        "MQTT client id; distinct per replica, never a device name",
        default_factory=default_client_id,
        shown="bridge_<POD_NAME or hostname>_<random>, unique per process",
    )
    http: HostPort | None = setting(
        "--http",
        "HOST:PORT of /healthz /readyz /metrics /devices (empty: no HTTP server)",
        default=None,
        parse=_http,
        program_default=DEFAULT_HTTP,  # a library user (a test) gets no server unless it asks
    )
    root: str = DEFAULT_ROOT
    """Topic root."""
    tls_ca: Path | None = tls_ca_setting()
    control_plane: str = setting(
        "--control-plane",
        "where DeviceProcess resources live",
        default="kube",
        choices=("kube", "local"),
    )
    state_dir: Path = setting(
        "--state-dir",
        "local control plane: the state directory",
        default=DEFAULT_STATE_DIR,
        parse=path,
    )
    kube: KubeSettings | None = group(KubeSettings, "kube control plane")
    """The Kubernetes control plane's settings (None: not built, e.g. under `up`)."""
    write_qps: float = setting(
        "--write-qps", "status writes per second", default=DEFAULT_WRITE_QPS, parse=number
    )
    write_burst: int = setting(
        "--write-burst",
        "status writes at once before the rate applies",
        default=DEFAULT_WRITE_BURST,
        parse=integer,
    )
    event_qps: float = setting(
        "--event-qps",
        "Events per second, a budget apart from status writes",
        default=DEFAULT_EVENT_QPS,
        parse=number,
    )
    event_burst: int = setting(
        "--event-burst",
        "Events at once before their rate applies",
        default=DEFAULT_EVENT_BURST,
        parse=integer,
    )
    stale_multiplier: float = setting(
        "--stale-multiplier",
        "HeartbeatTimeout after this many heartbeat periods of silence",
        default=float(DEFAULT_STALE_MULTIPLIER),
        parse=number,
    )
    mqtt_down_limit: float = setting(
        "--mqtt-down-limit",
        "seconds the MQTT link may stay down (not subscribed and read back) before /healthz fails",
        default=120.0,
        parse=number,
    )
    min_write_interval: float = DEFAULT_MIN_INTERVAL
    """Seconds between writes of one resource, after `key_write_burst` in quick succession."""
    key_write_burst: int = DEFAULT_KEY_BURST
    """Writes of one resource in quick succession before `min_write_interval` applies."""
    workers: int = 4
    """Concurrent writers (each write still takes a token)."""
    settle: float = 0.05
    """Seconds an intermediate state (Synced=Pending, phase Pending) waits before its write, so a
    spec change lands as one write: the report completing it (its generation, no longer Pending)
    is written at once and supersedes the wait (`statuses.write_delay`); device transitions
    (connect, will, timeout) are written at once."""
    keepalive: int = 30
    """MQTT keepalive in seconds."""
    call_timeout: float = 10.0
    """Seconds: bound of one control-plane call."""
    max_payload: int = MAX_PAYLOAD_BYTES
    """Bytes of one desired document (the brokers' limit)."""

    def __post_init__(self) -> None:
        if is_device_name(self.client_id):
            raise InvalidSettingError(
                "client_id",
                f"{{flag}}: {self.client_id!r} is a device name; a bridge may not use one",
            )
        for name in ("write_qps", "event_qps", "mqtt_down_limit"):
            if not getattr(self, name) > 0:
                raise InvalidSettingError(name, f"{{flag}} must be > 0, got {getattr(self, name)}")
        for name in ("write_burst", "event_burst"):
            if getattr(self, name) < 1:
                raise InvalidSettingError(name, f"{{flag}} must be >= 1, got {getattr(self, name)}")
        if not self.stale_multiplier > 1:
            raise InvalidSettingError(
                "stale_multiplier", f"{{flag}} must be > 1, got {self.stale_multiplier}"
            )
