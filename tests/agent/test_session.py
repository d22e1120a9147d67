"""The MQTT session in-process against a real broker: birth, will, republishing, refusals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from devicefabric.agent.errors import LoginRefusedError
from devicefabric.agent.session import Session, SessionSettings
from devicefabric.config.settings import BrokerURL
from tests.support.brokers import BrokerProcess
from tests.support.desired import DEVICE
from tests.support.inbox import Message
from tests.support.mqtt import Client, connect
from tests.support.waiting import async_wait_for


def settings(
    broker: BrokerProcess, device: str = DEVICE, password: str | None = None
) -> SessionSettings:
    return SessionSettings(
        device=device,
        broker=BrokerURL(broker.host, broker.port, tls=False),
        password=password if password is not None else broker.password(device),
        heartbeat_s=30,
        topics=broker.topics,
        agent_version="test",
        max_reconnect_backoff=0.5,
    )


@contextlib.asynccontextmanager
async def session_running(session: Session) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(session.run(), name="session under test")
    try:
        yield task
    finally:
        await session.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, LoginRefusedError):
            await task


def run(test: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()

    asyncio.run(bounded())


def deliver(session: Session, topic: str, payload: bytes) -> None:
    """What the transport does when the broker delivers a message to the session's connection."""
    session._on_message(topic, payload, retained=False)


def watch_status(broker: BrokerProcess) -> Client:
    observer = connect(broker, "observer")
    observer.subscribe(broker.topics.status(DEVICE))
    return observer


def births(observer: Client, broker: BrokerProcess) -> list[Message]:
    return [
        m
        for m in observer.inbox.messages(broker.topics.status(DEVICE))
        if m.json()["state"] == "online"
    ]


def test_birth_carries_session_and_heartbeat_and_close_is_a_clean_offline(
    mosquitto: BrokerProcess,
) -> None:
    observer = watch_status(mosquitto)

    async def story() -> None:
        session = Session(settings(mosquitto), on_desired=lambda _p: None, on_up=lambda: None)
        async with session_running(session):
            live = await async_wait_for(lambda: session.live, what="connected")
            await async_wait_for(lambda: births(observer, mosquitto))
            birth = births(observer, mosquitto)[0]
            assert birth.json() == {
                "state": "online",
                "session": live,
                "heartbeat_s": 30,
                "agent": "test",
            }
            await session.close()
            offline = observer.inbox.wait_for(
                mosquitto.topics.status(DEVICE), lambda m: m.json()["state"] == "offline"
            )
            assert offline.json() == {"state": "offline", "session": live, "reason": "shutdown"}

    try:
        run(story)
    finally:
        observer.close()


def test_a_late_offline_of_an_older_session_makes_the_agent_republish_its_birth(
    mosquitto: BrokerProcess,
) -> None:
    observer = watch_status(mosquitto)
    status = mosquitto.topics.status(DEVICE)

    async def story() -> None:
        session = Session(settings(mosquitto), on_desired=lambda _p: None, on_up=lambda: None)
        async with session_running(session):
            live = await async_wait_for(lambda: session.live, what="connected")
            await async_wait_for(lambda: len(births(observer, mosquitto)) == 1)

            # its own birth coming back changes nothing...
            own = births(observer, mosquitto)[0].payload
            deliver(session, status, own)
            # ...a late will of an older session (amqtt may route it after a takeover's birth)
            # makes it publish its birth again, for the live session
            deliver(session, status, b'{"state":"offline","session":"old-1","reason":"lost"}')
            await async_wait_for(lambda: len(births(observer, mosquitto)) == 2)
            # and so does anything else that is not its live birth
            deliver(session, status, b"garbage")
            await async_wait_for(lambda: len(births(observer, mosquitto)) == 3)
            assert [b.json()["session"] for b in births(observer, mosquitto)] == [live] * 3

    try:
        run(story)
    finally:
        observer.close()


@pytest.mark.fabric_revoked("dev-b")
@pytest.mark.parametrize(
    ("device", "password", "reason"),
    [
        (DEVICE, "wrong-password", "Not authorized"),  # both brokers answer 5, not 4
        ("dev-b", None, "Not authorized"),
    ],
    ids=["bad-password", "revoked"],
)
def test_a_refused_login_ends_the_session_instead_of_retrying(
    any_broker: BrokerProcess, device: str, password: str | None, reason: str
) -> None:
    async def story() -> None:
        session = Session(
            settings(any_broker, device, password), on_desired=lambda _p: None, on_up=lambda: None
        )
        with pytest.raises(LoginRefusedError) as info:
            await session.run()
        assert info.value.device == device
        assert info.value.reason == reason

    run(story)
