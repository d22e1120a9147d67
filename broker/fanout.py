"""Fan-out of the hardened broker: bounded per-client state, no global head-of-line blocking.

`FanoutBroker` is the bottom layer of `broker.hardening.HardenedBroker` (under
`broker.routing.RoutingBroker`). It replaces how amqtt 0.12.1 (`amqtt/broker.py`) delivers
messages and keeps subscriptions, each a way one client could grow the broker's memory for
everyone:

- `_run_broadcast` (~1009) started one task per delivery and kept them in one global deque that
  `_broadcast_loop` reaped only from its head: one subscriber that stopped reading pinned every
  later delivery of every client in memory. Here each delivery task is tracked per client
  (`Outbox`) and forgotten the moment it ends; amqtt's deque stays empty.
- Each connected client's outbox is bounded (`Limits.max_outgoing` messages and
  `Limits.max_outgoing_bytes` payload bytes not yet acknowledged): past the bound a QoS 0
  delivery is dropped and a QoS 1/2 delivery disconnects the client (its will fires; a
  persistent session keeps its subscriptions), as a real broker does with a slow consumer.
- Delivery uses the minimum of the published and the subscribed QoS (MQTT-3.8.4-6); amqtt
  used the subscription's, so QoS 0 heartbeats reached a QoS 1 subscriber as QoS 1.
- Offline persistent sessions queue QoS 1/2 only, at most `Limits.max_queued_offline`
  messages each (mosquitto's `max_queued_messages` default, 1000); the rest is dropped.
- Subscriptions: an emptied filter entry is removed on unsubscribe and on disconnect (amqtt left
  empty lists behind, walked by every later message); a client holds at most
  `Limits.max_subscriptions` filters, more are refused with SUBACK 0x80.
- Matching: amqtt checked every subscribed filter against every message (O(filters) per message,
  so the broker's CPU grew with the square of the fleet); here `broker.topicindex.FilterIndex`
  (exact filters in a set, wildcards in a trie) finds the matching filters directly. The index
  mirrors the keys of amqtt's `_subscriptions`; should they ever differ in size (a path of amqtt's
  we do not override), it is rebuilt from them before matching.

Every drop and refusal is counted and logged rate-limited per client (`broker.throttling`).
Invariant: nothing a client does grows state other than its own, and its own is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_0
from amqtt.session import Session
from typing_extensions import override

from devicefabric.broker.connection import FabricProtocolHandler, Limits
from devicefabric.broker.throttling import RefusalLog, emit
from devicefabric.broker.topicindex import FilterIndex

log = logging.getLogger("devicefabric.broker")

_SUBSCRIBE_REFUSED = 0x80


@dataclass(slots=True)
class Outbox:
    """The deliveries to one connection still in progress (written and not yet acknowledged)."""

    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    size: int = 0

    def full(self, limits: Limits, incoming: int) -> bool:
        return (
            len(self.tasks) >= limits.max_outgoing
            or self.size + incoming > limits.max_outgoing_bytes
        )


class FanoutBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker with bounded per-client delivery and subscription state."""

    def __init__(self, config: dict[str, Any], limits: Limits) -> None:
        super().__init__(config)
        self.limits = limits
        self.refusals = RefusalLog()
        self._outboxes: dict[int, Outbox] = {}  # by id(handler): one per connection
        self._filters: dict[str, set[str]] = {}  # client id -> its subscribed filters
        self._index = FilterIndex()  # the keys of `_subscriptions`, for matching

    def refuse(
        self, client_id: str, reason: str, detail: str, *, level: int = logging.INFO
    ) -> None:
        """Count one refusal and log it, rate-limited per client (or per peer address)."""
        lines = self.refusals.note(client_id, reason, detail, time.monotonic())
        emit(log, lines, level=level)

    def forget_client(self, client_id: str) -> None:
        emit(log, self.refusals.forget(client_id))

    # -- delivery --------------------------------------------------------------------------------
    @override
    async def _run_broadcast(self, running_tasks: Any) -> None:
        broadcast = await self._broadcast_queue.get()
        topic: str = broadcast["topic"]
        published_qos: int | None = broadcast.get("qos")
        for topic_filter in self.matching_filters(topic):
            subscriptions = self._subscriptions.get(topic_filter)
            if not subscriptions:
                continue
            for target, sub_qos in list(subscriptions):
                qos = sub_qos if published_qos is None else min(sub_qos, published_qos)
                if not await self._topic_filtering(target, topic, Action.RECEIVE):
                    continue
                if target.transitions.state != "connected":
                    if not target.clean_session and qos != QOS_0:
                        await self._retain_broadcast_message(broadcast, qos, target)
                    continue
                handler = self._get_handler(target)
                if isinstance(handler, FabricProtocolHandler):
                    self._deliver(target, handler, topic, broadcast["data"], qos)

    def matching_filters(self, topic: str) -> list[str]:
        """The subscribed filters matching `topic` (the index, checked against amqtt's keys)."""
        if len(self._index) != len(self._subscriptions):
            self._index = FilterIndex(self._subscriptions)
        return self._index.match(topic)

    def _deliver(
        self, session: Session, handler: FabricProtocolHandler, topic: str, data: Any, qos: int
    ) -> None:
        outbox = self._outboxes.setdefault(id(handler), Outbox())
        size = len(data or b"")
        if outbox.full(self.limits, size):
            if qos == QOS_0:
                self.refuse(session.client_id, "outgoing_dropped", topic)
                return
            self.refuse(session.client_id, "slow_consumer", f"{len(outbox.tasks)} pending")
            handler.abort()
            for pending in outbox.tasks:  # they would wait for PUBACKs that cannot come
                pending.cancel()
            return
        task = asyncio.create_task(handler.mqtt_publish(topic, data, qos, retain=False))
        outbox.tasks.add(task)
        outbox.size += size

        def done(task: asyncio.Task[Any]) -> None:
            outbox.tasks.discard(task)
            outbox.size -= size
            if not task.cancelled():
                task.exception()  # retrieved: a lost connection is handled by its session
            if not outbox.tasks and self._outboxes.get(id(handler)) is outbox:
                del self._outboxes[id(handler)]

        task.add_done_callback(done)

    async def cancel_deliveries(self) -> None:
        tasks = [t for o in self._outboxes.values() for t in o.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @override
    async def _retain_broadcast_message(
        self, broadcast: dict[str, Any], qos: int, target_session: Session
    ) -> None:
        queue = target_session.retained_messages
        if queue.qsize() >= self.limits.max_queued_offline:
            self.refuse(target_session.client_id, "offline_queue_full", broadcast["topic"])
            return
        queue.put_nowait(
            RetainedApplicationMessage(
                broadcast["session"], broadcast["topic"], broadcast["data"], qos
            )
        )

    # -- subscriptions -------------------------------------------------------------------------
    @override
    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter = subscription[0]
        held = self._filters.get(session.client_id, set())
        if topic_filter not in held and len(held) >= self.limits.max_subscriptions:
            self.refuse(session.client_id, "subscription_limit", topic_filter)
            return _SUBSCRIBE_REFUSED
        code: int = await super().add_subscription(subscription, session)
        if code == _SUBSCRIBE_REFUSED:
            self.refuse(session.client_id, "subscribe_denied", topic_filter)
        else:
            self._filters.setdefault(session.client_id, held).add(topic_filter)
            if topic_filter in self._subscriptions:
                self._index.add(topic_filter)
        return code

    def holds(self, session: Session, topic_filter: str) -> bool:
        """Whether `session` subscribed to `topic_filter`."""
        return topic_filter in self._filters.get(session.client_id, ())

    @override
    def _del_subscription(self, a_filter: str, session: Session) -> int:
        entries = self._subscriptions.get(a_filter)
        if entries is None:
            return 0
        before = len(entries)
        entries[:] = [e for e in entries if e[0].client_id != session.client_id]
        if not entries:
            del self._subscriptions[a_filter]
            self._index.discard(a_filter)
        held = self._filters.get(session.client_id)
        if held is not None:
            held.discard(a_filter)
            if not held:
                del self._filters[session.client_id]
        return before - len(entries)

    @override
    async def _del_all_subscriptions(self, session: Session) -> None:
        held = self._filters.pop(session.client_id, set())
        for topic_filter in held:
            entries = self._subscriptions.get(topic_filter)
            if entries is None:
                continue
            entries[:] = [e for e in entries if e[0].client_id != session.client_id]
            if not entries:
                del self._subscriptions[topic_filter]
                self._index.discard(topic_filter)
        with contextlib.suppress(Exception):
            self.forget_client(session.client_id)
