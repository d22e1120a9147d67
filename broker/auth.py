"""Admission and access decisions of the embedded broker: pure functions of names and secrets.

`Gatekeeper.admit(username, password, client_id)` decides whether a CONNECT may proceed and, if
not, why (`Refusal`); `Gatekeeper.rules(username)` returns the user's `AccessRules` from the one
rule table in `config.access`. Nothing here knows amqtt or sockets: `broker.plugins` adapts these
decisions to amqtt's plugin interface, and the tests drive them table-first.

Invariants:
- Device passwords are recomputed (HMAC of the fabric secret, `config.credentials`), never stored;
  the role users `bridge` and `observer` are derived in their own domain. Comparison is constant
  time once the username is a valid fabric user (a malformed name is refused before any HMAC, so
  unknown users are refused slightly faster: see docs/embedded-broker.md).
- Checks run in a fixed order and the first failure is the reason: username present, username a
  valid device or role name, password, revocation, client id. The password comes before the
  revocation list so that an unauthenticated client learns nothing, even from the logs' timing.
- A device must use its own name as client id; a role user an id with its role's prefix
  (`bridge_...`, `observer_...`), so no observer can take over a device's or a bridge's session -
  `config.access.client_id_allowed`.
- The revocation list is a file of device names, one per line (`#` comments and blank lines are
  ignored). It is re-read when its identity (inode, size, mtime) changes; `version` increases on
  every change so the broker can disconnect newly revoked devices. An unreadable file at start is a
  `BrokerConfigError`; a later read error keeps the last good list and is logged once.
- `admit` never raises: any unexpected error is a refusal (`Refusal.INTERNAL_ERROR`).
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Final

from devicefabric.broker.errors import BrokerConfigError
from devicefabric.config.access import NO_ACCESS, AccessRules, client_id_allowed, role_of, rules_for
from devicefabric.config.credentials import check_password
from devicefabric.config.names import is_device_name
from devicefabric.config.topics import Topics

log = logging.getLogger("devicefabric.broker.auth")

_RULES_CACHE_LIMIT: Final = 10_000


class Refusal(enum.StrEnum):
    """Why a CONNECT was refused; the value is the `reason` field of the log line."""

    NO_USERNAME = "no_username"
    INVALID_USERNAME = "invalid_username"
    BAD_PASSWORD = "bad_password"
    REVOKED = "revoked"
    CLIENT_ID_NOT_ALLOWED = "client_id_not_allowed"
    INTERNAL_ERROR = "internal_error"


def _file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def parse_revocations(text: str, source: str = "revocation list") -> frozenset[str]:
    """Device names in `text`, one per line; comments, blanks and invalid names are skipped."""
    names: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if is_device_name(line):
            names.add(line)
        else:
            log.warning(
                "%s line %d: %r is not a device name; ignored",
                source,
                lineno,
                line[:80],
                extra={"reason": "invalid_revocation_entry"},
            )
    return frozenset(names)


class RevocationList:
    """The revoked device names, read from a file and re-read when the file changes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.version = 0
        self._names: frozenset[str] = frozenset()
        self._identity: tuple[int, int, int] | None = None
        self._failing = False
        if path is not None:
            try:
                self._identity = _file_identity(path)
                self._names = parse_revocations(path.read_text(encoding="utf-8"), str(path))
            except (OSError, UnicodeDecodeError) as exc:
                raise BrokerConfigError("--revoked-file", f"cannot read {path}: {exc}") from exc

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the set of revoked names changed."""
        if self.path is None:
            return False
        try:
            identity = _file_identity(self.path)
            if identity == self._identity:
                return False
            names = parse_revocations(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError) as exc:
            if not self._failing:
                log.warning(
                    "cannot re-read revocation list %s (%s); keeping the last good list",
                    self.path,
                    exc,
                    extra={"reason": "revocation_list_unreadable"},
                )
            self._failing = True
            return False
        self._failing = False
        self._identity = identity
        if names == self._names:
            return False
        log.info(
            "revocation list %s reloaded: %d device(s) revoked",
            self.path,
            len(names),
            extra={"reason": "revocation_list_changed"},
        )
        self._names = names
        self.version += 1
        return True

    def __contains__(self, name: object) -> bool:
        return name in self._names


class Gatekeeper:
    """Admission (who may connect) and access rules (what they may touch) for one fabric."""

    def __init__(
        self, secret: bytes, topics: Topics, revocations: RevocationList | None = None
    ) -> None:
        self._secret = secret
        self.topics = topics
        self.revocations = revocations if revocations is not None else RevocationList()
        self._rules: dict[str, AccessRules] = {}

    def __repr__(self) -> str:  # never show the secret
        return f"Gatekeeper(root={self.topics.root!r}, revoked={len(self.revocations.names)})"

    def admit(
        self, username: str | None, password: str | bytes | None, client_id: str | None
    ) -> Refusal | None:
        """None when the CONNECT may proceed, else the first reason to refuse it."""
        try:
            return self._admit(username, password, client_id)
        except Exception:
            log.exception("admission check failed; refusing", extra={"client_id": client_id})
            return Refusal.INTERNAL_ERROR

    def _admit(
        self, username: str | None, password: str | bytes | None, client_id: str | None
    ) -> Refusal | None:
        if not username:
            return Refusal.NO_USERNAME
        if role_of(username) is None:
            return Refusal.INVALID_USERNAME
        if not check_password(self._secret, username, password):
            return Refusal.BAD_PASSWORD
        self.revocations.refresh()
        if username in self.revocations:
            return Refusal.REVOKED
        if client_id is None or not client_id_allowed(username, client_id):
            return Refusal.CLIENT_ID_NOT_ALLOWED
        return None

    def is_revoked(self, username: str | None) -> bool:
        return username is not None and username in self.revocations

    def rules(self, username: str | None) -> AccessRules:
        """The access rules of `username` (no access for anything that is not a fabric user)."""
        if not username:
            return NO_ACCESS
        rules = self._rules.get(username)
        if rules is None:
            if len(self._rules) >= _RULES_CACHE_LIMIT:
                self._rules.clear()
            rules = self._rules[username] = rules_for(username, self.topics)
        return rules
