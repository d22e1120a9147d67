"""The embedded broker: amqtt, hardened (`broker.hardening`), enforcing the fabric's rules.

    async with EmbeddedBroker(BrokerSettings(secret=...)) as broker:
        print(broker.url)              # the bound address (port 0 picks a free one)
        await broker.serve_forever()   # until cancelled

or `await EmbeddedBroker(settings).run()`, which does both. Entering binds the listening socket
first, so an address in use is a `BrokerConfigError` naming `--mqtt` (CLI exit code 2) instead of
an amqtt traceback; TLS files are loaded up front the same way. One listener serves MQTT 3.1.1,
over TLS when `tls_cert`/`tls_key` are set.

Policy: `broker.auth.Gatekeeper` (device HMAC auth, role users, revocation list, client-id rule,
the `config.access` rule table) through the plugins of `broker.plugins`. A background task
re-reads the revocation file every `revocation_poll` seconds and disconnects newly revoked
devices that are connected (their will fires, so the bridge sees them go offline).

Resource limits (docs/security.md): `max_connections` per listener (capped below the descriptor
limit), a CONNECT within `connect_timeout` and within `Limits.max_connect` bytes, bounded
per-client delivery, offline queues and subscriptions (`broker.fanout`). `refusal_counts` is the
counter of every refusal by reason.

Payload limit: a PUBLISH (or will) payload above `max_payload` (default 64 KiB) closes the
client's connection (its will fires) instead of being dropped silently: the publisher learns at
once, and mosquitto's `max_packet_size` behaves the same way, so both brokers agree. Exiting the
context shuts amqtt down (no wills are published for connections the shutdown drops), waits for
every connection to end, and cancels the watcher.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from pathlib import Path
from typing import Final, Self

from amqtt.errors import BrokerError as AmqttBrokerError

from devicefabric.broker.auth import Gatekeeper, RevocationList
from devicefabric.broker.connection import Limits
from devicefabric.broker.errors import BrokerConfigError, BrokerError
from devicefabric.broker.hardening import HardenedBroker
from devicefabric.broker.plugins import plugin_config
from devicefabric.broker.settings import BrokerSettings, fd_budget
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import Topics
from devicefabric.runtime.lifecycle import Closing, stop_task

log = logging.getLogger("devicefabric.broker")

_LISTENER: Final = "default"
_DRAIN_TIMEOUT: Final = 5.0

__all__ = ["BrokerSettings", "EmbeddedBroker", "bind_listener", "limits_of"]


def limits_of(settings: BrokerSettings) -> Limits:
    """The hardened connections' limits for `settings` (connections kept below `fd_budget`)."""
    return Limits(
        max_payload=settings.max_payload,
        connect_timeout=settings.connect_timeout,
        max_connections=min(settings.max_connections, fd_budget()),
    )


def bind_listener(address: HostPort) -> socket.socket:
    """A listening TCP socket on `address`, or a `BrokerConfigError` naming `--mqtt`."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BrokerConfigError("--mqtt", f"cannot resolve {address.host!r}: {exc}") from exc
    family = infos[0][0]
    try:
        return socket.create_server((address.host, address.port), family=family, backlog=1024)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BrokerConfigError(
                "--mqtt", f"{address} is already in use; choose a free HOST:PORT with --mqtt"
            ) from exc
        raise BrokerConfigError("--mqtt", f"cannot listen on {address}: {exc.strerror}") from exc


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from PEM files; clients authenticate by password."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerConfigError("--tls-cert", f"cannot load {cert} / {key}: {exc}") from exc
    return context


class EmbeddedBroker(Closing):
    """The hardened amqtt broker with the fabric's auth and ACL, as an async context manager."""

    def __init__(self, settings: BrokerSettings, gatekeeper: Gatekeeper | None = None) -> None:
        self.settings = settings
        self.gatekeeper = gatekeeper or Gatekeeper(
            settings.secret, Topics(settings.root), RevocationList(settings.revoked_file)
        )
        self._broker: HardenedBroker | None = None
        self._sock: socket.socket | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise BrokerError("the embedded broker is not running")
        return int(self._sock.getsockname()[1])

    @property
    def address(self) -> HostPort:
        return HostPort(self.settings.mqtt.host, self.port)

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.settings.tls_cert else "mqtt"
        return f"{scheme}://{self.address}"

    async def __aenter__(self) -> Self:
        settings = self.settings
        context = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            context = tls_context(settings.tls_cert, settings.tls_key)
        self._sock = bind_listener(settings.mqtt)
        config = {
            "listeners": {_LISTENER: {"type": "tcp", "bind": str(settings.mqtt)}},
            "plugins": plugin_config(self.gatekeeper),
        }
        try:
            self._broker = HardenedBroker(
                config, limits=limits_of(settings), sockets={_LISTENER: (self._sock, context)}
            )
            await self._broker.start()
        except (AmqttBrokerError, OSError) as exc:
            self._sock.close()
            self._broker = None
            raise BrokerError(f"the embedded broker failed to start: {exc}") from exc
        self._watcher = asyncio.create_task(self._watch_revocations(), name="broker-revocations")
        cap = limits_of(settings).max_connections
        if cap < settings.max_connections:
            log.warning(
                "at most %d connections: the descriptor limit (ulimit -n) leaves no room for %d",
                cap,
                settings.max_connections,
                extra={"reason": "fd_limit"},
            )
        log.info("broker listening on %s", self.url)
        return self

    async def aclose(self) -> None:
        """Stop accepting, drop every connection, and wait until they have all ended."""
        watcher, self._watcher = self._watcher, None
        await stop_task(watcher)
        broker, self._broker = self._broker, None
        if broker is None:
            return
        await broker.shutdown()
        connections = set(broker.connection_tasks)
        if connections:
            _, pending = await asyncio.wait(connections, timeout=_DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        log.info("broker stopped")

    async def serve_forever(self) -> None:
        """Block until cancelled (the context manager's exit does the shutdown)."""
        await asyncio.Event().wait()

    async def run(self) -> None:
        """Start, serve until cancelled, shut down."""
        async with self:
            await self.serve_forever()

    @property
    def refusal_counts(self) -> dict[str, int]:
        """Refusals by reason since start (denied publishes, drops, disconnected consumers...)."""
        return {} if self._broker is None else dict(self._broker.refusals.counts)

    def disconnect(self, client_id: str, reason: str = "admin") -> bool:
        """Drop a connected client (its will fires); False when it is not connected."""
        return self._broker is not None and self._broker.disconnect_client(client_id, reason)

    async def _watch_revocations(self) -> None:
        revocations = self.gatekeeper.revocations
        seen = revocations.version
        while True:
            await asyncio.sleep(self.settings.revocation_poll)
            revocations.refresh()
            if revocations.version == seen:
                continue
            seen = revocations.version
            for device in sorted(revocations.names):
                self.disconnect(device, "revoked")
