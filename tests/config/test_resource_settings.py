"""Tier 1: conditions keep lastTransitionTime; settings parse addresses and env-backed flags."""

from __future__ import annotations

import pytest

from devicefabric.config.errors import ConfigError
from devicefabric.config.resource import (
    AGENT_CONNECTED,
    SYNCED,
    Reason,
    find_condition,
    make_condition,
    set_condition,
)
from devicefabric.config.settings import (
    HostPort,
    dialable,
    parse_broker_url,
    parse_broker_urls,
    parse_hostport,
)


def test_transition_time_changes_only_with_status() -> None:
    conds = set_condition([], make_condition(AGENT_CONNECTED, Reason.CONNECTED, "t1"))
    conds = set_condition(conds, make_condition(SYNCED, Reason.PENDING, "t1"))
    same = set_condition(conds, make_condition(AGENT_CONNECTED, Reason.CONNECTED, "t2"))
    assert same == conds
    # Same status, other reason: reason changes, time does not.
    lost = set_condition(conds, make_condition(AGENT_CONNECTED, Reason.CONNECTION_LOST, "t3"))
    timeout = set_condition(lost, make_condition(AGENT_CONNECTED, Reason.HEARTBEAT_TIMEOUT, "t4"))
    cond = find_condition(timeout, AGENT_CONNECTED)
    assert cond is not None
    assert (cond.status, cond.reason, cond.last_transition_time) == (
        "False",
        "HeartbeatTimeout",
        "t3",
    )
    assert [c.type for c in timeout] == [AGENT_CONNECTED, SYNCED]


def test_messages_are_fixed_per_reason() -> None:
    for reason in Reason:
        a = make_condition(AGENT_CONNECTED, reason, "2026-01-01T00:00:00Z")
        b = make_condition(AGENT_CONNECTED, reason, "2027-01-01T00:00:00Z")
        assert a.message == b.message == reason.message
        assert not any(ch.isdigit() for ch in a.message)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:1883", HostPort("127.0.0.1", 1883)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
        ("[::1]:8080", HostPort("::1", 8080)),
        ("localhost:65535", HostPort("localhost", 65535)),
    ],
)
def test_hostport(value: str, expected: HostPort) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["1883", ":1883", "host:", "host:x", "host:65536", ""])
def test_bad_hostport_names_the_flag(value: str) -> None:
    with pytest.raises(ConfigError, match="--http"):
        parse_hostport(value, "--http")


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtts://broker.example:8884", "broker.example", 8884, True),
        ("mqtt://b", "b", 1883, False),
        ("mqtts://b", "b", 8883, True),
    ],
)
def test_broker_urls(url: str, host: str, port: int, tls: bool) -> None:
    parsed = parse_broker_url(url)
    assert (parsed.host, parsed.port, parsed.tls) == (host, port, tls)


@pytest.mark.parametrize(
    "url", ["tcp://b:1883", "mqtt://", "b:1883", "mqtt://b:99999", "mqtt://u:p@b:1", "mqtt://b/x"]
)
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="--broker"):
        parse_broker_url(url)


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        ("mqtt://a:1", [1]),
        ("mqtt://a:1,mqtt://b:2", [1, 2]),
        (" mqtt://a:1 , mqtt://a:2 ,mqtt://a:3", [1, 2, 3]),
    ],
)
def test_a_broker_url_list_keeps_its_order(value: str, ports: list[int]) -> None:
    assert [u.port for u in parse_broker_urls(value)] == ports


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("mqtt://a:1,", "empty"),
        ("mqtt://a:1,,mqtt://b:1", "empty"),
        ("mqtt://a:1,mqtt://a:1", "twice"),
        ("mqtt://a:1,mqtts://b:1", "one scheme"),
        ("mqtt://a:1,tcp://b:1", "expected mqtt://"),
        (",".join(f"mqtt://a:{p}" for p in range(1, 18)), "at most 16"),
    ],
)
def test_bad_broker_url_lists(value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_broker_urls(value)


@pytest.mark.parametrize(
    ("listen", "dialled"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("[::]:1883", "[::1]:1883"),
        ("10.0.0.5:1883", "10.0.0.5:1883"),
    ],
)
def test_a_wildcard_listen_address_is_dialled_on_loopback(listen: str, dialled: str) -> None:
    assert str(dialable(parse_hostport(listen))) == dialled
