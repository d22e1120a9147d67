"""Shared setting values: contract defaults, and address and broker-URL parsing.

Pure: no environment, no argparse (those are `runtime.settings`). A parsing error is a
`ConfigError` whose one-line message starts with the flag's name, which the CLI turns into exit
code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from devicefabric.config.errors import ConfigError

DEFAULT_MQTT: Final = "127.0.0.1:1883"
DEFAULT_BROKER: Final = f"mqtt://{DEFAULT_MQTT}"  # what an MQTT client dials by default
DEFAULT_HTTP: Final = "127.0.0.1:8080"
DEFAULT_STATE_DIR: Final = Path(".devicefabric")
DEFAULT_HEARTBEAT_S: Final = 15
DEFAULT_STALE_MULTIPLIER: Final = 3
# The control-plane budgets (`--write-qps/--write-burst`, `--event-qps/--event-burst`). Status
# writes: controller-runtime's client defaults (20/s, burst 30). Events have a budget of their
# own, so a status write never waits for an Event: N resources changed at once all read their
# new status after max(0, N - write burst) / write qps seconds (docs/kubernetes.md).
DEFAULT_WRITE_QPS: Final = 20.0
DEFAULT_WRITE_BURST: Final = 30
DEFAULT_EVENT_QPS: Final = 10.0
DEFAULT_EVENT_BURST: Final = 50


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def dialable(address: HostPort) -> HostPort:
    """The address a local client dials for a listen address: a wildcard is reached on loopback
    (a pod's `DEVICEFABRIC_HTTP=0.0.0.0:8080`, `up --mqtt 0.0.0.0:1883`)."""
    if address.host in ("0.0.0.0", ""):  # noqa: S104 - comparing, not binding
        return HostPort("127.0.0.1", address.port)
    if address.host == "::":
        return HostPort("::1", address.port)
    return address


def parse_hostport(value: str, flag: str = "--mqtt") -> HostPort:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`); port 0 means "any free port"."""
    host, sep, port_s = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not _usable_host(host) or not _is_port(port_s):
        raise ConfigError(f"{flag}: expected HOST:PORT, got {value!r}")
    return HostPort(host, int(port_s))


def _is_port(text: str) -> bool:
    """ASCII digits only (superscripts and other scripts' digits pass `str.isdigit`), <= 65535."""
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535


def _usable_host(host: str) -> bool:
    """Non-empty, no whitespace or control characters (a NUL would fail later as a ValueError)."""
    return bool(host) and all(ch.isprintable() and not ch.isspace() for ch in host)


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HostPort(self.host, self.port)}"


def parse_broker_url(value: str, flag: str = "--broker") -> BrokerURL:
    """`mqtt://host:port` or `mqtts://host:port` (defaults 1883 / 8883)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{flag}: invalid broker URL {value!r}: {exc}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("mqtt", "mqtts") or not _usable_host(host):
        raise ConfigError(f"{flag}: expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"{flag}: broker URL takes only scheme, host and port: {value!r}")
    tls = parts.scheme == "mqtts"
    return BrokerURL(host, port if port is not None else (8883 if tls else 1883), tls)


MAX_BROKER_URLS: Final = 16


def parse_broker_urls(value: str, flag: str = "--broker") -> list[BrokerURL]:
    """One broker URL or a comma-separated list of a cluster's nodes: distinct, one scheme."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise ConfigError(f"{flag}: an empty broker URL in {value!r}")
    if len(parts) > MAX_BROKER_URLS:
        raise ConfigError(f"{flag}: at most {MAX_BROKER_URLS} broker URLs, got {len(parts)}")
    urls = [parse_broker_url(p, flag) for p in parts]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{flag}: a broker URL appears twice in {value!r}")
    if len({u.tls for u in urls}) > 1:
        raise ConfigError(f"{flag}: mix of mqtt:// and mqtts:// URLs in {value!r}: use one scheme")
    return urls
