"""The production broker config: a `mosquitto.conf` and a dynamic-security JSON, from the rule table.

mosquitto's dynamic-security plugin (2.0.11, measured) is configured with one JSON document of
clients and roles. This module turns the fabric's one access-rule table (`config.access`) into that
document, so the embedded broker and mosquitto enforce the same rules:

- one client per device, `clientid` bound to the device name (mosquitto refuses the device under
  any other client id), holding its own role `device:<name>` with *literal* topics: 2.0.11 does
  not substitute `%u`/`%c` in ACL topics, so a shared device role cannot be written;
- the `bridge` and `observer` clients, with no `clientid` binding (replicas and several observers
  connect at once under distinct ids) and the roles `bridge` and `observer`;
- `defaultACLAccess` denies publishClientSend, publishClientReceive and subscribe (unsubscribe is
  allowed): whatever the table does not grant is refused, including each delivery and retained
  replay (publishClientReceive is checked per delivery);
- ACL entries are generated from `rules_for(...)` filters and never spelled here: publish filters
  become `publishClientSend`; receive filters become `publishClientReceive` plus
  `subscribeLiteral` (a filter without wildcards: only that exact filter may be subscribed, which is
  what `covers` means for a literal) or `subscribePattern` (a wildcard filter); a `deny_receive`
  filter (the observer's logs) becomes the same two entries with `allow: false` and a higher
  `priority` (the plugin checks a role's ACLs of one type highest priority first and the first
  match decides: a delivery on a denied topic is refused, and so is a subscription the denied
  pattern covers, while a wider one such as `{root}/#` is granted);
- passwords are the derived fabric passwords (`config.credentials.password_for`), stored as
  mosquitto stores them: base64 PBKDF2-HMAC-SHA512 (64 bytes) with a random 12-byte salt (base64)
  and 101 iterations;
- a revoked device keeps its client entry with `"disabled": true` (mosquitto refuses its
  CONNECT; regenerating without it restores it);
- `max_packet_size` carries DESIGN.md's payload limit (64 KiB by default): mosquitto disconnects
  a client sending a larger packet, as the embedded broker does;
- `max_queued_messages` is sized for the fleet (`queue_bound`): at mosquitto's default of 1,000 a
  mass disconnect or a bridge restart of a larger fleet loses wills and retained documents.

What mosquitto cannot express (written down in docs/mosquitto.md): a role user may use any client
id, including a device's name; a device's will may name any topic it may publish to (the table
allows the will only on its status topic).

Everything here is pure except `write_config` (and `generate`, which composes and calls it). It
writes the two files (the JSON mode 0600: it holds password hashes) and, when run as root with a
`user` set, hands the JSON and its directory to that user, because mosquitto drops to that user
before it loads the plugin, and rewrites the JSON in place when changed at run time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devicefabric.config.access import AccessRules, rules_for
from devicefabric.config.credentials import password_for
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER, validate_device
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import DEFAULT_ROOT, Topics, covers
from devicefabric.config.wire import MAX_PAYLOAD_BYTES

DEFAULT_PLUGIN: Final = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
CONF_NAME: Final = "mosquitto.conf"
DYNSEC_NAME: Final = "dynamic-security.json"

DEFAULT_MAX_PAYLOAD: Final = (
    MAX_PAYLOAD_BYTES  # DESIGN.md's payload limit (config), as the embedded broker's
)
# mosquitto limits whole packets: room for the fixed header, the topic and the packet id.
PACKET_OVERHEAD: Final = 1024

# mosquitto's `max_queued_messages` bounds, per client, the QoS 1/2 messages waiting beyond the
# in-flight window (default 1000). The bridge receives the whole fleet's bursts on one connection:
# a retained replay at its start (status + report + desired per device), a mass disconnect (one
# will per device), onboarding (birth + report per device). At mosquitto's default, a burst of
# more than ~1,000 devices is dropped ("Outgoing messages are being dropped"). The generated
# bound holds one such burst: QUEUE_FLOOR + QUEUED_PER_DEVICE x devices.
QUEUE_FLOOR: Final = 1000  # mosquitto's own default, kept for a small fleet
QUEUED_PER_DEVICE: Final = 4  # status + report + desired replayed, and one more (will or birth)

PBKDF2_ITERATIONS: Final = 101
SALT_BYTES: Final = 12
HASH_BYTES: Final = 64

DEVICE_ROLE_PREFIX: Final = "device:"  # ':' never occurs in a device name: no role can collide

Salt = Callable[[], bytes]
DynsecDoc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MosquittoSettings:
    """What `mosquitto.conf` says besides the rules.

    `dynsec_file` is the JSON's path *as mosquitto will see it* (absolute: mosquitto resolves a
    relative path against its own working directory). `persistence_dir` None means persistence
    off (the default: retained state is rebuilt by the bridge and the agents on reconnect).
    `user` is mosquitto's `user` option (the account it drops to when started as root).
    `tls_cert`/`tls_key` (both or neither) make the listener TLS-only (`mqtts://`).
    `max_payload` becomes `max_packet_size` (plus `PACKET_OVERHEAD`): mosquitto disconnects a
    client sending a larger packet, as the embedded broker does for a larger payload.
    `max_queued_messages` is mosquitto's per-client queue bound (see `queue_bound`).
    """

    listener: HostPort
    dynsec_file: Path
    plugin: Path = DEFAULT_PLUGIN
    persistence_dir: Path | None = None
    user: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_queued_messages: int = QUEUE_FLOOR


def queue_bound(devices: int) -> int:
    """`max_queued_messages` for a fleet of `devices`: room for one whole burst to the bridge.

    mosquitto 2.0 has no per-client queue setting, so the bound applies to every client; only
    the bridge and an observer subscribe to the whole fleet, and each of them holds at most this
    many small documents (~200 B) while it cannot keep up. QoS 0 heartbeats are not queued for an
    offline session (`queue_qos0_messages` stays false).
    """
    return QUEUE_FLOOR + QUEUED_PER_DEVICE * max(0, devices)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    password: str  # base64 PBKDF2-SHA512
    salt: str  # base64 of SALT_BYTES random bytes
    iterations: int


# -- inputs ----------------------------------------------------------------------------------------
def parse_name_list(text: str, source: str) -> tuple[str, ...]:
    """Device names, one per line; blank lines and `#` comments are skipped.

    Raise `ConfigError` naming `source` and the line number of an invalid or duplicate name.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            validate_device(line)
        except ConfigError as exc:
            raise ConfigError(f"{source}:{lineno}: {exc}") from exc
        if line in seen:
            raise ConfigError(
                f"{source}:{lineno}: device {line!r} is listed twice (first on line {seen[line]})"
            )
        seen[line] = lineno
        names.append(line)
    return tuple(names)


def read_name_list(path: Path) -> tuple[str, ...]:
    """`parse_name_list` of a file; an unreadable file is a `ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parse_name_list(text, str(path))


# -- passwords -------------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> PasswordHash:
    """The dynamic-security form of `password`: PBKDF2-HMAC-SHA512 over the raw salt bytes."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"mosquitto's dynamic-security salt is {SALT_BYTES} bytes")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_BYTES)
    return PasswordHash(password=_b64(digest), salt=_b64(salt), iterations=iterations)


def random_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


# -- the dynamic-security document -----------------------------------------------------------------
def role_name(username: str) -> str:
    """The role of one fabric user: `device:<name>` for a device, the role user's own name else."""
    return username if username in (BRIDGE_USER, OBSERVER_USER) else DEVICE_ROLE_PREFIX + username


def _has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


DENY_PRIORITY: Final = 1  # above the allow entries' default 0: a deny is checked first


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _deny(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": False, "priority": DENY_PRIORITY}


def _subscribe_type(topic_filter: str) -> str:
    return "subscribePattern" if _has_wildcard(topic_filter) else "subscribeLiteral"


def acls_for(rules: AccessRules) -> list[dict[str, Any]]:
    """The dynamic-security ACL entries granting exactly `rules` (on top of a deny default).

    Wills have no ACL type of their own in mosquitto: a will is checked as a publish. The table's
    will filters must therefore be within its publish filters, or mosquitto would refuse a will
    the table allows.
    """
    for will in rules.will:
        if not any(covers(allowed, will) for allowed in rules.publish):
            raise ConfigError(f"will filter {will!r} is not publishable; mosquitto cannot grant it")
    entries = [_acl("publishClientSend", f) for f in rules.publish]
    for topic_filter in rules.receive:
        entries.append(_acl("publishClientReceive", topic_filter))
        entries.append(_acl(_subscribe_type(topic_filter), topic_filter))
    for topic_filter in rules.deny_receive:
        entries.append(_deny("publishClientReceive", topic_filter))
        entries.append(_deny(_subscribe_type(topic_filter), topic_filter))
    return entries


def _client(
    username: str,
    secret: bytes,
    salt: Salt,
    *,
    clientid: str | None,
    disabled: bool = False,
) -> dict[str, Any]:
    hashed = hash_password(password_for(secret, username), salt())
    client: dict[str, Any] = {"username": username}
    if clientid is not None:
        client["clientid"] = clientid
    client |= {
        "password": hashed.password,
        "salt": hashed.salt,
        "iterations": hashed.iterations,
        "roles": [{"rolename": role_name(username)}],
    }
    if disabled:
        client["disabled"] = True
    return client


def dynsec_config(
    devices: Iterable[str],
    secret: bytes,
    topics: Topics,
    *,
    revoked: Iterable[str] = (),
    salt: Salt = random_salt,
) -> DynsecDoc:
    """The dynamic-security JSON document for `devices` plus the `bridge` and `observer` users.

    Devices in `revoked` are written disabled. Each call draws fresh salts (pass `salt` to pin them).
    """
    names = [validate_device(d) for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError("a device is listed more than once")
    revoked_set = frozenset(revoked)
    clients = [
        _client(d, secret, salt, clientid=d, disabled=d in revoked_set) for d in sorted(names)
    ]
    clients += [_client(u, secret, salt, clientid=None) for u in (BRIDGE_USER, OBSERVER_USER)]
    users = [*sorted(names), BRIDGE_USER, OBSERVER_USER]
    roles = [{"rolename": role_name(u), "acls": acls_for(rules_for(u, topics))} for u in users]
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _conf_value(value: str, what: str) -> str:
    if not value or any(ch in value for ch in "\n\r\x00") or value != value.strip():
        raise ConfigError(f"{what} {value!r} cannot be written into mosquitto.conf")
    return value


def mosquitto_conf(settings: MosquittoSettings) -> str:
    """The text of `mosquitto.conf`: one listener, no anonymous access, dynamic security only.

    No `password_file`/`acl_file` is written: the plugin alone authenticates and authorises.
    """
    listener = settings.listener
    if listener.port == 0:
        raise ConfigError("--mqtt: mosquitto needs a fixed port, not 0")
    if settings.max_payload < 1:
        raise ConfigError(f"--max-payload must be positive, got {settings.max_payload}")
    if settings.max_queued_messages < 1:
        raise ConfigError(
            f"--max-queued-messages must be positive, got {settings.max_queued_messages}"
        )
    if not settings.dynsec_file.is_absolute():
        raise ConfigError(f"dynamic-security file {settings.dynsec_file} must be an absolute path")
    lines = [
        "# Generated by `devicefabric broker mosquitto-config` from the fabric's access rules.",
        "# Regenerate instead of editing; see docs/mosquitto.md.",
        "per_listener_settings false",
        "allow_anonymous false",
        # Small retained documents must not wait for Nagle + delayed ACK (~40 ms per hop).
        "set_tcp_nodelay true",
        f"max_packet_size {settings.max_payload + PACKET_OVERHEAD}",
        # Sized for the fleet: the bridge must receive a whole burst (replay, mass disconnect).
        f"max_queued_messages {settings.max_queued_messages}",
    ]
    if settings.persistence_dir is None:
        lines.append("persistence false")
    else:
        location = _conf_value(str(settings.persistence_dir), "persistence directory")
        lines += ["persistence true", f"persistence_location {location.rstrip('/')}/"]
    if settings.user is not None:
        lines.append(f"user {_conf_value(settings.user, 'user')}")
    lines.append(f"listener {listener.port} {_conf_value(listener.host, 'listener host')}")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if settings.tls_cert is not None and settings.tls_key is not None:
        lines += [
            f"certfile {_conf_value(str(settings.tls_cert), 'TLS certificate path')}",
            f"keyfile {_conf_value(str(settings.tls_key), 'TLS key path')}",
        ]
    lines += [
        f"plugin {_conf_value(str(settings.plugin), 'plugin path')}",
        f"plugin_opt_config_file {_conf_value(str(settings.dynsec_file), 'dynamic-security file')}",
    ]
    return "\n".join(lines) + "\n"


def dynsec_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


# -- the one IO function ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WrittenConfig:
    conf: Path
    dynsec: Path


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)  # noqa: PTH101 - umask-proof, before the file is visible
    tmp.replace(path)


MOSQUITTO_ACCOUNT: Final = "mosquitto"  # what mosquitto drops to as root when `user` is unset


def default_user() -> str | None:
    """The `user` to write when none was asked for: as root, mosquitto's own default account.

    mosquitto started as root drops to the `mosquitto` account before it reads the plugin's
    JSON, so a config generated by root for root would be unreadable to it (every login then
    refused). As root the files are handed to that account (when it exists); otherwise mosquitto
    runs as whoever runs it, and nothing needs to be written.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 - POSIX only

    try:
        pwd.getpwnam(MOSQUITTO_ACCOUNT)
    except KeyError:
        return None
    return MOSQUITTO_ACCOUNT


def _hand_over(paths: Iterable[Path], user: str) -> None:
    """As root, give `paths` to `user`: mosquitto drops to it before reading and rewriting them."""
    import pwd  # noqa: PLC0415 - POSIX only, and only needed as root

    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ConfigError(f"--user: no such account {user!r}") from exc
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def write_config(
    out_dir: Path, conf_text: str, dynsec_doc: Mapping[str, Any], user: str | None = None
) -> WrittenConfig:
    """Write `mosquitto.conf` (0644) and the dynamic-security JSON (0600) into `out_dir`."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        conf = out_dir / CONF_NAME
        dynsec = out_dir / DYNSEC_NAME
        _write_atomic(conf, conf_text, 0o644)
        _write_atomic(dynsec, dynsec_json(dynsec_doc), 0o600)
        if user is not None and user != "root" and hasattr(os, "geteuid") and os.geteuid() == 0:
            _hand_over((out_dir, dynsec), user)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write the config into {out_dir}: {exc}") from exc
    return WrittenConfig(conf=conf, dynsec=dynsec)


def generate(
    out_dir: Path,
    devices: Iterable[str],
    secret: bytes,
    listener: HostPort,
    *,
    root: str = DEFAULT_ROOT,
    revoked: Iterable[str] = (),
    plugin: Path = DEFAULT_PLUGIN,
    dynsec_file: Path | None = None,
    persistence_dir: Path | None = None,
    user: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_queued_messages: int | None = None,
) -> WrittenConfig:
    """Generate and write both files; the JSON path in the conf defaults to the written file.

    `max_queued_messages` None: `queue_bound` of the number of devices.
    """
    out = out_dir.absolute()
    devices = tuple(devices)
    if max_queued_messages is None:
        max_queued_messages = queue_bound(len(devices))
    settings = MosquittoSettings(
        listener=listener,
        dynsec_file=dynsec_file if dynsec_file is not None else out / DYNSEC_NAME,
        plugin=plugin,
        persistence_dir=persistence_dir,
        user=user,
        tls_cert=tls_cert.absolute() if tls_cert is not None else None,
        tls_key=tls_key.absolute() if tls_key is not None else None,
        max_payload=max_payload,
        max_queued_messages=max_queued_messages,
    )
    conf_text = mosquitto_conf(settings)
    doc = dynsec_config(devices, secret, Topics(root), revoked=revoked)
    return write_config(out, conf_text, doc, user=user)
