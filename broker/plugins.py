"""amqtt plugins that enforce the fabric's rules: thin adapters over `broker.auth.Gatekeeper`.

amqtt loads plugins by dotted path from the broker config and fills each plugin's `Config`
dataclass strictly (unknown keys fail). Both plugins here take the same `Gatekeeper` object as
their only setting, so one revocation list and one rules cache serve authentication and every
topic check:

    {"plugins": {
        "devicefabric.broker.plugins.FabricAuthPlugin": {"gatekeeper": gk},
        "devicefabric.broker.plugins.FabricTopicPlugin": {"gatekeeper": gk},
    }}

- `FabricAuthPlugin.authenticate` -> `Gatekeeper.admit`; a refusal's reason is left in
  `session.attributes[REFUSAL_ATTRIBUTE]` for the broker's single WARNING line (the plugin does
  not log, so a refusal is logged exactly once, by `broker.hardening`).
- `FabricTopicPlugin.topic_filtering` answers PUBLISH (concrete topic), SUBSCRIBE (a filter: it
  must be covered by a receive rule) and RECEIVE (each delivery, retained replays included).
  `will_filtering` is the hook `broker.hardening` calls for wills (amqtt has no will action):
  a device may set a will only on its own status topic.

Both return a bool for every input (never None: amqtt treats None from a topic plugin as a denial
and from an auth plugin as "no opinion"), and never raise for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from devicefabric.broker.auth import Gatekeeper
from devicefabric.broker.hardening import REFUSAL_ATTRIBUTE

AUTH_PLUGIN: Final = "devicefabric.broker.plugins.FabricAuthPlugin"
TOPIC_PLUGIN: Final = "devicefabric.broker.plugins.FabricTopicPlugin"


def plugin_config(gatekeeper: Gatekeeper) -> dict[str, dict[str, Gatekeeper]]:
    """The `plugins` section of an amqtt broker config enforcing `gatekeeper`."""
    return {AUTH_PLUGIN: {"gatekeeper": gatekeeper}, TOPIC_PLUGIN: {"gatekeeper": gatekeeper}}


class FabricAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Device auth by recomputed HMAC, the role users, revocation and the client-id rule."""

    @dataclass
    class Config:
        gatekeeper: Gatekeeper

    async def authenticate(self, *, session: Session) -> bool:
        gatekeeper: Gatekeeper = self.config.gatekeeper
        refusal = gatekeeper.admit(session.username, session.password, session.client_id)
        if refusal is not None:
            session.attributes[REFUSAL_ATTRIBUTE] = refusal.value
            return False
        return True


class FabricTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Publish / subscribe / receive / will checks from the rule table in `config.access`."""

    @dataclass
    class Config:
        gatekeeper: Gatekeeper

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        if session is None or not topic:
            return False
        gatekeeper: Gatekeeper = self.config.gatekeeper
        rules = gatekeeper.rules(session.username)
        if action == Action.PUBLISH:
            return rules.may_publish(topic)
        if action == Action.SUBSCRIBE:
            return rules.may_subscribe(topic)
        if action == Action.RECEIVE:
            return rules.may_receive(topic)
        return False

    async def will_filtering(self, *, session: Session, topic: str) -> bool:
        gatekeeper: Gatekeeper = self.config.gatekeeper
        return bool(topic) and gatekeeper.rules(session.username).may_will(topic)
