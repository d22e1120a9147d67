"""Credential derivation: every password is an HMAC of the fabric secret, compared in constant time.

    device password = b64url_nopad(HMAC-SHA256(secret, device_name))
    role password   = b64url_nopad(HMAC-SHA256(secret, "role:" + role))

A device name is a DNS-1123 label and can never contain ':', so the role domain never collides
with a device (no device password can equal a role password). The agent holds only its own
password; brokers recompute it, so there is no per-device password file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

from devicefabric.config.errors import SecretError
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER, RESERVED_NAMES, validate_device

SECRET_ENV: Final = "DEVICEFABRIC_SECRET"
SECRET_FILE_NAME: Final = "secret"
MIN_SECRET_BYTES: Final = 16
ROLES: Final = (BRIDGE_USER, OBSERVER_USER)


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def device_password(secret: bytes, device: str) -> str:
    """The password of `device` (validated) under `secret`."""
    validate_device(device)
    return _b64(hmac.new(secret, device.encode("ascii"), hashlib.sha256).digest())


def role_password(secret: bytes, role: str) -> str:
    """The password of a role user (`bridge` or `observer`) under `secret`."""
    if role not in RESERVED_NAMES:
        raise SecretError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return _b64(hmac.new(secret, f"role:{role}".encode("ascii"), hashlib.sha256).digest())


def password_for(secret: bytes, username: str) -> str:
    """The password of any fabric user: a role or a device."""
    if username in RESERVED_NAMES:
        return role_password(secret, username)
    return device_password(secret, username)


def check_password(secret: bytes, username: str, password: str | bytes | None) -> bool:
    """Constant-time check of `password` for `username`; False for invalid names, never raises."""
    if password is None:
        return False
    try:
        expected = password_for(secret, username).encode("ascii")
    except Exception:
        return False
    given = password.encode("utf-8", "replace") if isinstance(password, str) else password
    return hmac.compare_digest(expected, given)


def new_secret() -> str:
    """A fresh fabric secret (256 random bits, url-safe text)."""
    return _b64(os.urandom(32))


def _check_secret(raw: bytes, source: str) -> bytes:
    secret = raw.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"fabric secret from {source} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return secret


def read_secret_file(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from exc
    return _check_secret(raw, str(path))


def load_secret(
    secret_file: Path | None,
    state_dir: Path | None = None,
    *,
    create: bool = False,
    environ: dict[str, str] | None = None,
) -> bytes:
    """The fabric secret: `secret_file`, else `$DEVICEFABRIC_SECRET`, else `state_dir/secret`.

    With `create`, a missing state-directory secret is created with mode 0600 (for `up`).
    """
    env = os.environ if environ is None else environ
    if secret_file is not None:
        return read_secret_file(secret_file)
    if env.get(SECRET_ENV):
        return _check_secret(env[SECRET_ENV].encode(), f"${SECRET_ENV}")
    if state_dir is not None:
        path = state_dir / SECRET_FILE_NAME
        if not path.exists() and create:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(new_secret() + "\n")
        if path.exists():
            return read_secret_file(path)
    raise SecretError(
        f"no fabric secret: pass --secret-file, set {SECRET_ENV}, or give a --state-dir "
        "holding a secret file (created by `devicefabric up`)"
    )


def read_password_file(path: Path) -> str:
    """A password file holds one password on its first line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read password file {path}: {exc}") from exc
    password = text.strip()
    if not password:
        raise SecretError(f"password file {path} is empty")
    return password
