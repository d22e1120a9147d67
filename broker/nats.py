"""Node configs for a NATS server cluster serving MQTT over JetStream, from the rule table.

NATS server (2.9) speaks MQTT 3.1.1 on top of JetStream, which replicates retained messages and
sessions over the cluster. This module turns the fabric's one access-rule table (`config.access`)
into N node configs (JSON, which the NATS config parser reads), one per node:

- `server_name` per node, JetStream with its own store directory, one cluster (named, default
  `devicefabric`) with routes to every other node, authenticated by a route user whose password is
  derived from the fabric secret (without it, anyone reaching a route port could join the cluster
  as a node and read every subject; a node of another cluster, e.g. one started on a reused port,
  cannot merge into this one), and the `mqtt` block with `stream_replicas` = min(3, N): with NATS' default (2 on a
  3-node cluster, measured) killing one node made every new CONNECT fail until it came back;
- one user per device (2.9 has no per-user templates outside JWT mode), the `bridge` and the
  `observer`, each with the derived fabric password as a bcrypt hash (the same hash in every node)
  and `allowed_connection_types: ["MQTT"]`: no fabric user may log in over the NATS protocol, where
  it could subscribe to internal subjects;
- permissions generated from `rules_for(...)` filters with the MQTT -> subject mapping (`/` -> `.`,
  `+` -> `*`, `#` -> `>`); every user may subscribe to `$MQTT.sub.>` (a QoS 1 subscription needs
  it), and a receive filter `a/#` also grants subject `a` (MQTT's `#` matches the parent level,
  NATS' `>` does not); a `deny_receive` filter (the observer's logs) becomes a subscribe `deny`
  entry, which NATS applies to a wider subscription message by message - at QoS 0 only, so such
  a user gets no `$MQTT.sub.>` and may not subscribe at QoS 1 (`permissions_of`).

What NATS cannot express (docs/scale.md): a device's client id is not bound to its name, a will is
checked as an ordinary publish (any topic the user may publish to), and a publish into a forbidden
subject is acknowledged (PUBACK) and dropped rather than refused, and the MQTT listener does not
apply `max_payload` (an MQTT PUBLISH over 64 KiB is delivered, measured on 2.9.10). The observer,
whose rules deny it the logs topics, subscribes at QoS 0 only, and a *retained* message on a logs
topic would still reach its wider subscription (NATS replays retained messages past a subscribe
deny; the fabric never retains a logs message, and only the bridge and the device itself may
publish one). Revoked devices are left out.

Everything here is pure except `write_configs`; bcrypt is imported only when hashing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devicefabric.config.access import AccessRules, rules_for
from devicefabric.config.credentials import password_for
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER, validate_device
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import DEFAULT_ROOT, Topics

CLUSTER_NAME: Final = "devicefabric"
ROUTE_USER: Final = "route"
MAX_STREAM_REPLICAS: Final = 3
MQTT_SUB_SUBJECT: Final = "$MQTT.sub.>"  # a QoS 1 subscription's internal consumer subject
DEFAULT_BCRYPT_ROUNDS: Final = 11
CONF_SUFFIX: Final = ".conf"

Hasher = Callable[[str], str]
NodeConf = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NatsNode:
    """One node's addresses as its peers and clients see them, and its JetStream store."""

    name: str
    client: HostPort
    cluster: HostPort
    mqtt: HostPort
    store_dir: Path


def subject_of(topic_filter: str) -> str:
    """The NATS subject of an MQTT topic or filter: `/` -> `.`, `+` -> `*`, `#` -> `>`."""
    if "." in topic_filter:
        raise ConfigError(f"NATS cannot carry a topic containing '.': {topic_filter!r}")
    levels = topic_filter.split("/")
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in levels)


def _subjects(filters: Iterable[str]) -> list[str]:
    """The subjects of MQTT filters; `a/#` also names `a` (MQTT's `#` matches the parent)."""
    subjects: list[str] = []
    for topic_filter in filters:
        if topic_filter.endswith("/#"):
            subjects.append(subject_of(topic_filter[:-2]))
        subjects.append(subject_of(topic_filter))
    return subjects


def subscribe_subjects(receive: Iterable[str]) -> list[str]:
    """The subjects a user may subscribe to for its receive filters (`a/#` also grants `a`)."""
    return list(dict.fromkeys([*_subjects(receive), MQTT_SUB_SUBJECT]))


def permissions_of(rules: AccessRules) -> dict[str, Any]:
    """A NATS `permissions` block allowing exactly the rules' publish and receive filters."""
    publish = list(dict.fromkeys(subject_of(f) for f in (*rules.publish, *rules.will)))
    subscribe: dict[str, Any] = {"allow": subscribe_subjects(rules.receive)}
    if rules.deny_receive:
        # NATS applies a subscribe deny to QoS 0 deliveries only: a QoS 1 subscription is served
        # by a JetStream consumer delivering on `$MQTT.sub.<id>`, which the deny never sees
        # (measured on 2.9.10). Without `$MQTT.sub.>` such a user's QoS 1 subscriptions are
        # refused (fail closed): it reads at QoS 0, where the deny holds message by message.
        subscribe["allow"].remove(MQTT_SUB_SUBJECT)
        subscribe["deny"] = list(dict.fromkeys(_subjects(rules.deny_receive)))
    perms: dict[str, Any] = {"subscribe": subscribe}
    perms["publish"] = {"allow": publish} if publish else {"deny": [">"]}
    return perms


def bcrypt_hasher(rounds: int = DEFAULT_BCRYPT_ROUNDS) -> Hasher:
    """A bcrypt hasher (`$2b$` hashes, which NATS verifies); needs the `broker` extra."""
    try:
        import bcrypt  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(f"bcrypt is missing: pip install 'devicefabric[broker]' ({exc})") from exc

    def hash_password(password: str) -> str:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()

    return hash_password


def users(
    devices: Iterable[str], secret: bytes, topics: Topics, hasher: Hasher
) -> list[dict[str, Any]]:
    """The `authorization.users` list: every device, the bridge and the observer, MQTT only."""
    names = [validate_device(d) for d in dict.fromkeys(devices)]
    return [
        {
            "user": name,
            "password": hasher(password_for(secret, name)),
            "allowed_connection_types": ["MQTT"],
            "permissions": permissions_of(rules_for(name, topics)),
        }
        for name in (*names, BRIDGE_USER, OBSERVER_USER)
    ]


def route_password(secret: bytes) -> str:
    """The cluster routes' password: an HMAC of the fabric secret, URL-safe (it sits in route URLs)."""
    digest = hmac.new(secret, b"nats:route", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def node_configs(
    nodes: Sequence[NatsNode],
    user_list: Sequence[Mapping[str, Any]],
    *,
    route_secret: str,
    cluster_name: str = CLUSTER_NAME,
) -> dict[str, NodeConf]:
    """One config per node name; every node routes to every other and shares the users."""
    if not nodes:
        raise ConfigError("a NATS cluster needs at least one node")
    if len({n.name for n in nodes}) != len(nodes):
        raise ConfigError("NATS node names must be distinct")
    replicas = min(MAX_STREAM_REPLICAS, len(nodes))
    confs: dict[str, NodeConf] = {}
    for node in nodes:
        conf: NodeConf = {
            "server_name": node.name,
            "listen": str(node.client),
            "jetstream": {"store_dir": str(node.store_dir)},
            "mqtt": {"listen": str(node.mqtt), "stream_replicas": replicas},
            "authorization": {"users": list(user_list)},
        }
        if len(nodes) > 1:
            conf["cluster"] = {
                "name": cluster_name,
                "listen": str(node.cluster),
                "authorization": {"user": ROUTE_USER, "password": route_secret},
                "routes": [
                    f"nats-route://{ROUTE_USER}:{route_secret}@{p.cluster}"
                    for p in nodes
                    if p is not node
                ],
            }
        confs[node.name] = conf
    return confs


def plan_nodes(hosts: Sequence[str], base: Mapping[str, int], store_root: Path) -> list[NatsNode]:
    """Node k on `hosts[k]`: base ports, plus k when several nodes share a host (a test cluster)."""
    if not hosts:
        raise ConfigError("a NATS cluster needs at least one node")
    shared = len(set(hosts)) < len(hosts)
    return [
        NatsNode(
            name=f"nats-{k}",
            client=HostPort(host, base["client"] + (k if shared else 0)),
            cluster=HostPort(host, base["cluster"] + (k if shared else 0)),
            mqtt=HostPort(host, base["mqtt"] + (k if shared else 0)),
            store_dir=store_root / f"nats-{k}",
        )
        for k, host in enumerate(hosts)
    ]


def write_configs(out: Path, confs: Mapping[str, NodeConf]) -> list[Path]:
    """Write `<node>.conf` per node (mode 0600: it holds password hashes); return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, conf in confs.items():
        path = out / f"{name}{CONF_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(conf, f, indent=2)
        written.append(path)
    return written


def generate(
    out: Path,
    nodes: Sequence[NatsNode],
    devices: Iterable[str],
    secret: bytes,
    *,
    root: str = DEFAULT_ROOT,
    revoked: Iterable[str] = (),
    hasher: Hasher | None = None,
    cluster_name: str = CLUSTER_NAME,
) -> list[Path]:
    """Compose and write the node configs; revoked devices get no user at all."""
    if not cluster_name or not all(c.isalnum() or c in "-_" for c in cluster_name):
        raise ConfigError(
            f"a NATS cluster name is letters, digits, '-' and '_', not {cluster_name!r}"
        )
    gone = set(revoked)
    kept = [d for d in devices if d not in gone]
    user_list = users(kept, secret, Topics(root), hasher or bcrypt_hasher())
    confs = node_configs(
        nodes, user_list, route_secret=route_password(secret), cluster_name=cluster_name
    )
    return write_configs(out, confs)
