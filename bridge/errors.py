"""The bridge's error hierarchy: what the work queue retries, and what it gives up on."""

from __future__ import annotations

from devicefabric.config.errors import DeviceFabricError


class BridgeError(DeviceFabricError):
    """Root of the bridge's errors."""


class ControlPlaneError(BridgeError):
    """A control-plane call failed."""


class ConflictError(ControlPlaneError):
    """The write raced another writer (HTTP 409): re-read and retry."""


class NotFoundError(ControlPlaneError):
    """The resource is gone (HTTP 404): a terminal outcome for this key, never retried.

    `kind` is what was not found when the server said (its Status `details.kind`): `namespaces`
    when a create names a namespace that does not exist.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class TransientError(ControlPlaneError):
    """Try again later (HTTP 429, 5xx, connection errors); `retry_after` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MqttError(BridgeError):
    """The broker refused the bridge (login or subscriptions): fix the configuration, exit 1."""


class StateDirError(BridgeError):
    """The local control plane's state directory cannot be written (full disk, read-only...)."""
