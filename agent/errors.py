"""The agent's errors: a small hierarchy under `DeviceFabricError`, each a one-line reason.

`LoginRefusedError` is terminal: the broker said the credentials are wrong, the device is not
authorized or revoked; retrying would only hammer the broker, so the CLI exits with code 2.
`StateDirError` means the state directory cannot be used at all (also a configuration error).
Everything the agent meets at runtime that is not terminal (a lost connection, a process that
cannot start, a corrupt state file) is handled and reported, never raised past `Agent.run`.
"""

from __future__ import annotations

from devicefabric.config.errors import DeviceFabricError


class AgentError(DeviceFabricError):
    """Root of the agent's errors."""


class LoginRefusedError(AgentError):
    """The broker refused the login for a reason retrying cannot fix."""

    def __init__(self, device: str, broker: str, reason: str) -> None:
        self.device = device
        self.broker = broker
        self.reason = reason
        super().__init__(f"broker {broker} refused the login of device {device!r}: {reason}")


class StateDirError(AgentError):
    """The state directory cannot be created or written."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"state directory {path}: {why}")
