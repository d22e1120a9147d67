"""The one access-rule table of DESIGN.md, from which every broker's ACLs are generated.

| user       | client id                 | publish                          | receive / subscribe |
| device `d` | must be `d`               | d/status, d/heartbeat, d/report, | d/desired, d/status, bridge/status, |
|            | (will only on d/status)   | d/logs/reply                     | d/logs/request      |
| `bridge`   | `bridge_<anything>`       | +/desired, +/logs/request,       | +/status, +/heartbeat, +/report, +/desired, |
|            |                           | bridge/status                    | +/logs/reply        |
| `observer` | `observer_<anything>`     | nothing                          | {root}/# except +/logs/# (denied) |

The observer's one deny: logs can hold secrets, so a watcher of the whole fabric reads neither a
logs request nor a reply (`AccessRules.deny_receive`: a delivery matching a deny filter is
refused; so is a subscription entirely inside one, e.g. `devices/+/logs/reply`; a wider one such
as `{root}/#` is granted and its logs deliveries are dropped one by one). Every broker kind can say
so: the embedded broker asks `may_receive` per delivery, mosquitto's dynamic security takes deny
ACLs with a higher priority, NATS a subscribe `deny` list (checked per delivery).

A role user's client id must carry its own role prefix (`client_id_prefix`): `_` is not allowed in
a device name, so such an id can never take over a device's session, and an observer can never
take over a bridge's session (nor the reverse).

`rules_for` returns the filters for one user; `AccessRules` answers publish / will / subscribe /
receive questions with MQTT filter semantics. The embedded broker calls it on every check and the
mosquitto and NATS generators turn the same filters into dynamic-security roles and permissions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER, is_device_name
from devicefabric.config.topics import DeviceTopic, Topics, covers, is_valid_filter, matches


class Role(enum.StrEnum):
    DEVICE = "device"
    BRIDGE = "bridge"
    OBSERVER = "observer"


def role_of(username: str) -> Role | None:
    """The role of a username, or None when it is neither a role user nor a valid device name."""
    if username == BRIDGE_USER:
        return Role.BRIDGE
    if username == OBSERVER_USER:
        return Role.OBSERVER
    if is_device_name(username):
        return Role.DEVICE
    return None


def client_id_prefix(role: Role) -> str:
    """The prefix a role user's client id must start with (`bridge_`, `observer_`)."""
    return f"{role.value}_"


def client_id_allowed(username: str, client_id: str) -> bool:
    """A device must use its own name as client id; a role user an id with its role's prefix."""
    role = role_of(username)
    if role is Role.DEVICE:
        return client_id == username
    if role in (Role.BRIDGE, Role.OBSERVER):
        prefix = client_id_prefix(role)
        return client_id.startswith(prefix) and len(client_id) > len(prefix)
    return False


@dataclass(frozen=True, slots=True)
class AccessRules:
    """Topic filters one user may publish to, set a will on, and subscribe to / receive from.

    `deny_receive` carves topics out of `receive`: a topic matching one of them is never
    delivered, and a filter that one of them covers may not be subscribed.
    """

    publish: tuple[str, ...]
    will: tuple[str, ...]
    receive: tuple[str, ...]
    deny_receive: tuple[str, ...] = ()

    def may_publish(self, topic: str) -> bool:
        return any(matches(f, topic) for f in self.publish)

    def may_will(self, topic: str) -> bool:
        return any(matches(f, topic) for f in self.will)

    def may_receive(self, topic: str) -> bool:
        return any(matches(f, topic) for f in self.receive) and not any(
            matches(f, topic) for f in self.deny_receive
        )

    def may_subscribe(self, topic_filter: str) -> bool:
        return (
            is_valid_filter(topic_filter)
            and any(covers(f, topic_filter) for f in self.receive)
            and not any(covers(f, topic_filter) for f in self.deny_receive)
        )


NO_ACCESS = AccessRules(publish=(), will=(), receive=())


def rules_for(username: str, topics: Topics) -> AccessRules:
    """The rules of `username` (a device name or a role); no access for anything else."""
    role = role_of(username)
    if role is Role.DEVICE:
        own = (
            topics.status(username),
            topics.heartbeat(username),
            topics.report(username),
            topics.logs_reply(username),
        )
        return AccessRules(
            publish=own,
            will=(topics.status(username),),
            receive=(
                topics.desired(username),
                topics.status(username),
                topics.bridge_status(),
                topics.logs_request(username),
            ),
        )
    if role is Role.BRIDGE:
        return AccessRules(
            publish=(
                topics.all_devices(DeviceTopic.DESIRED),
                topics.all_devices(DeviceTopic.LOGS_REQUEST),
                topics.bridge_status(),
            ),
            will=(topics.bridge_status(),),
            receive=(
                topics.all_devices(DeviceTopic.STATUS),
                topics.all_devices(DeviceTopic.HEARTBEAT),
                topics.all_devices(DeviceTopic.REPORT),
                topics.all_devices(DeviceTopic.DESIRED),
                topics.all_devices(DeviceTopic.LOGS_REPLY),
            ),
        )
    if role is Role.OBSERVER:
        return AccessRules(
            publish=(),
            will=(),
            receive=(topics.everything(),),
            deny_receive=(topics.all_logs(),),
        )
    return NO_ACCESS
