"""Errors of the contract layer: each says what was wrong in one line a user can act on.

`ConfigError` and its subclasses mean "bad input or configuration" (CLI exit code 2). They carry
structured attributes so callers can count or log them without parsing messages.
"""

from __future__ import annotations


def shorten(text: str, longest: int) -> str:
    """`text` as a message shows it: cut to `longest` characters, ending in `...` when cut."""
    return text if len(text) <= longest else text[: longest - 3] + "..."


class DeviceFabricError(Exception):
    """Root of every devicefabric error."""


class ConfigError(DeviceFabricError):
    """Invalid configuration or input; the CLI maps it to exit code 2."""


class InvalidDeviceNameError(ConfigError):
    """A device name that is not a DNS-1123 label, or is reserved."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why
        super().__init__(f"invalid device name {shorten(name, 80)!r}: {why}")


class TopicError(ConfigError):
    """A topic that is not one of the fabric's topics."""

    def __init__(self, topic: str, why: str) -> None:
        self.topic = topic
        self.why = why
        super().__init__(f"topic {shorten(topic, 120)!r}: {why}")


class PayloadError(ConfigError):
    """A payload that is oversized, not JSON, or not the schema of its topic kind."""

    def __init__(self, kind: str, reason: str, detail: str) -> None:
        self.kind = kind
        self.reason = reason  # "oversized", "invalid_json", "schema" (bridge: also "sequence")
        self.detail = detail
        super().__init__(f"{kind} payload rejected ({reason}): {detail}")


class SecretError(ConfigError):
    """The fabric secret or a password file is missing or unusable."""
