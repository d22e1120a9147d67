"""Errors of the embedded broker, each a one-line message a user can act on.

`BrokerError` is the root (a runtime failure, CLI exit code 1). `BrokerConfigError` is also a
`ConfigError` (exit code 2): a bad flag value, an address already in use, unreadable TLS or
revocation files. amqtt's own exceptions are translated at the edge (`raise ... from exc`) in
`broker.embedded`, so callers never need to import amqtt to handle a failure.
"""

from __future__ import annotations

from devicefabric.config.errors import ConfigError, DeviceFabricError


class BrokerError(DeviceFabricError):
    """The embedded broker failed at runtime."""


class BrokerConfigError(BrokerError, ConfigError):
    """The embedded broker cannot start with this configuration; `flag` names what to change."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        super().__init__(f"{flag}: {message}")
