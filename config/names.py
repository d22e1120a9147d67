"""Device-name validation: a device name is a DNS-1123 label and never a reserved role name.

The same name is the MQTT username, the MQTT client id, a topic level and a Kubernetes label
value, so every entry point (CLI, broker auth, bridge ingest, CRD schema) calls `validate_device`.
"""

from __future__ import annotations

import re
from typing import Final

from devicefabric.config.errors import InvalidDeviceNameError

DEVICE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DEVICE_RE: Final = re.compile(DEVICE_NAME_PATTERN)

BRIDGE_USER: Final = "bridge"
OBSERVER_USER: Final = "observer"
RESERVED_NAMES: Final = frozenset({BRIDGE_USER, OBSERVER_USER})

# Kubernetes object names (DNS-1123 subdomain) and namespaces (DNS-1123 label).
NAMESPACE_PATTERN: Final = DEVICE_NAME_PATTERN
OBJECT_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_OBJECT_RE: Final = re.compile(OBJECT_NAME_PATTERN)
MAX_OBJECT_NAME: Final = 253


def is_device_name(name: str) -> bool:
    """True when `name` is a valid, non-reserved device name (never raises)."""
    return bool(_DEVICE_RE.fullmatch(name)) and name not in RESERVED_NAMES


def validate_device(name: str) -> str:
    """Return `name` if it is a valid device name, else raise `InvalidDeviceNameError`."""
    if not isinstance(name, str):  # pragma: no cover - typed callers; CLI passes str
        raise InvalidDeviceNameError(repr(name), "not a string")
    if not name:
        raise InvalidDeviceNameError(name, "must not be empty")
    if len(name) > 63:
        raise InvalidDeviceNameError(name, f"{len(name)} characters, at most 63 allowed")
    if name in RESERVED_NAMES:
        raise InvalidDeviceNameError(name, "reserved for the fabric's own role users")
    if not _DEVICE_RE.fullmatch(name):
        raise InvalidDeviceNameError(
            name,
            "must be a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return name


def is_object_key(key: str) -> bool:
    """True when `key` is `<namespace>/<name>` of a Kubernetes object."""
    namespace, sep, name = key.partition("/")
    return (
        sep == "/"
        and bool(_DEVICE_RE.fullmatch(namespace))
        and len(name) <= MAX_OBJECT_NAME
        and bool(_OBJECT_RE.fullmatch(name))
    )
