"""Message routing of the hardened broker: ACL on every path, acknowledge after routing.

`RoutingBroker` is the half of `broker.hardening.HardenedBroker` that handles what clients
publish and what they receive; the module docstring of `broker.hardening` lists every override
with the amqtt 0.12.1 behaviour it replaces (defects 1, 2, 4 and 8 live here). In short:

- `_client_message_loop` (amqtt `broker.py` ~606) routes each incoming message in arrival order
  and only then completes its QoS flow (`FabricProtocolHandler.acknowledge`: PUBACK / PUBCOMP);
  a delivery seen in the same round as the disconnect is handled first, so order is kept.
- `_route` replaces `_handle_message_delivery` (~742): an invalid PUBLISH topic aborts the
  connection (amqtt broke out of the loop and left the client connected); a denied publish is
  acknowledged and dropped, as on mosquitto, counted and logged rate-limited per client
  (`broker.throttling`). Fan-out to subscribers is `broker.fanout`.
- `_handle_disconnect` (~657) first routes everything the client sent before the connection
  ended, then publishes the will if the connection was lost - after checking it again
  (`_will_permitted`), and never during a broker shutdown.
- `_publish_retained_messages_for_subscription` (~1134) and `_publish_session_retained_messages`
  (~1116) check RECEIVE for each message they replay. The first serves only a filter the session
  holds (defence in depth: amqtt calls it for *every* client's filter when a session resumes,
  ~601, a path `broker.hardening` already replaced), and an exact filter is one lookup instead of
  a walk over every retained message (a device's SUBSCRIBE cost O(retained), so onboarding a
  fleet cost O(devices^2)).
- `_topic_filtering` (~893) calls the topic plugins in sequence (amqtt starts a task per plugin
  per check) and turns an exception into a denial. A topic plugin may offer
  `will_filtering(session=, topic=)`; amqtt has no will action, so without it a will is checked
  as a PUBLISH.

Invariant: nothing reaches a subscriber, a retained slot or an offline queue without passing the
topic plugins for that subscriber (RECEIVE) and that publisher (PUBLISH, or will).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session
from typing_extensions import override

from devicefabric.broker.connection import FabricProtocolHandler, Limits
from devicefabric.broker.fanout import FanoutBroker
from devicefabric.broker.topicindex import is_wildcard, matches
from devicefabric.config.errors import TopicError
from devicefabric.config.topics import validate_publish_topic

log = logging.getLogger("devicefabric.broker")


class RoutingBroker(FanoutBroker):
    """amqtt's broker with ACL-checked replays and wills, and acknowledgement after routing."""

    def __init__(self, config: dict[str, Any], limits: Limits) -> None:
        super().__init__(config, limits)
        self._topic_checkers = [
            p for p in self.plugins_manager.plugins if isinstance(p, BaseTopicPlugin)
        ]
        self._closing = False

    @override
    async def shutdown(self) -> None:
        self._closing = True  # connections dropped by the shutdown publish no will
        await super().shutdown()
        await self.cancel_deliveries()

    # -- topic checks (defects 1, 2) -----------------------------------------------------------
    @override
    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        try:
            for plugin in self._topic_checkers:
                if not await plugin.topic_filtering(session=session, topic=topic, action=action):
                    return False
        except Exception:
            log.exception("topic check raised; denying", extra={"client_id": session.client_id})
            return False
        return True

    async def _will_permitted(self, session: Session) -> bool:
        topic = session.will_topic or ""
        try:
            validate_publish_topic(topic)
            for plugin in self._topic_checkers:
                check = getattr(plugin, "will_filtering", None)
                if check is not None:
                    allowed = await check(session=session, topic=topic)
                else:
                    allowed = await plugin.topic_filtering(
                        session=session, topic=topic, action=Action.PUBLISH
                    )
                if not allowed:
                    return False
        except TopicError:
            return False
        except Exception:
            log.exception("will check raised; denying", extra={"client_id": session.client_id})
            return False
        return True

    @override
    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None or not self.holds(session, topic_filter):
            return  # only the session's own filters (amqtt's resume path replayed everyone's)
        if is_wildcard(topic_filter):
            candidates = [
                (t, m) for t, m in list(self._retained_messages.items()) if matches(topic_filter, t)
            ]
        else:  # one lookup, not a walk over every retained message
            found = self._retained_messages.get(topic_filter)
            candidates = [] if found is None else [(topic_filter, found)]
        sends = []
        for topic, retained in candidates:
            if not await self._topic_filtering(session, topic, Action.RECEIVE):
                continue
            rqos = min(qos, retained.qos if retained.qos is not None else qos)
            sends.append(handler.mqtt_publish(topic, retained.data, rqos, retain=True))
        await asyncio.gather(*sends, return_exceptions=True)

    @override
    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        sends = []
        while handler is not None and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if await self._topic_filtering(session, queued.topic, Action.RECEIVE):
                sends.append(
                    handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=True)
                )
        await asyncio.gather(*sends, return_exceptions=True)

    # -- the session's message loop: route, then acknowledge (defects 4, 8, 2) --------------------
    @override
    async def _client_message_loop(self, session: Session, handler: FabricProtocolHandler) -> None:
        disconnect = handler.ended
        subscribe = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [disconnect, subscribe, unsubscribe, deliver],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if deliver in done:  # before a disconnect seen in the same round: keep order
                    await self._route(session, handler, deliver.result(), acknowledge=True)
                    deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if subscribe in done:
                    await self._handle_subscription(session, handler, subscribe)
                    subscribe = asyncio.ensure_future(handler.get_next_pending_subscription())
                if unsubscribe in done:
                    await self._handle_unsubscription(session, handler, unsubscribe)
                    unsubscribe = asyncio.ensure_future(handler.get_next_pending_unsubscription())
                if disconnect in done:
                    await self._handle_disconnect(session, handler, disconnect)
                    return
        finally:
            waiters = (subscribe, unsubscribe, deliver)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _route(
        self, session: Session, handler: FabricProtocolHandler, message: Any, *, acknowledge: bool
    ) -> None:
        """Route one incoming message (ACL-checked), then complete its QoS flow."""
        if message is None:
            return
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id, message=message
        )
        try:
            validate_publish_topic(message.topic)
        except TopicError as exc:
            log.warning(
                "protocol violation: %s; closing the connection",
                exc,
                extra={"client_id": session.client_id, "reason": "invalid_topic"},
            )
            handler.abort()
            queue = session.delivered_message_queue
            while not queue.empty():  # nothing the client sent after the violation is routed
                queue.get_nowait()
            return
        if await self._topic_filtering(session, message.topic, Action.PUBLISH):
            await self.plugins_manager.fire_event(
                BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=message
            )
            await self._broadcast_message(session, message.topic, message.data, message.qos)
            if message.retain:
                await self.retain_message(session, message.topic, message.data, message.qos)
        else:  # counted; logged once per client and interval (a flood must not flood the log)
            self.refuse(session.client_id, "publish_denied", message.topic)
        if acknowledge:
            await handler.acknowledge(message)

    @override
    async def _handle_disconnect(
        self, client_session: Session, handler: FabricProtocolHandler, disconnect_waiter: Any
    ) -> None:
        queue = client_session.delivered_message_queue
        while not queue.empty():  # what the client sent before it went away, in order
            await self._route(client_session, handler, queue.get_nowait(), acknowledge=False)
        abnormal = not isinstance(disconnect_waiter.result(), DisconnectPacket)
        if abnormal and client_session.will_flag:
            await self._publish_will(client_session)
        await self._stop_handler(handler)
        client_session.transitions.disconnect()
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_DISCONNECTED,
            client_id=client_session.client_id,
            client_session=client_session,
        )

    async def _publish_will(self, session: Session) -> None:
        topic, message = session.will_topic, session.will_message or b""
        if self._closing:
            return
        if not await self._will_permitted(session):
            log.warning(
                "will denied; dropped",
                extra={"client_id": session.client_id, "topic": topic, "reason": "acl"},
            )
            return
        await self._broadcast_message(session, topic, message, session.will_qos)
        if session.will_retain:
            await self.retain_message(session, topic, message, session.will_qos)
