"""Tier 1: the broker's admission and topic decisions, table-driven, no sockets."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from amqtt.contexts import Action
from amqtt.session import Session

from devicefabric.broker.auth import Gatekeeper, Refusal, RevocationList, parse_revocations
from devicefabric.broker.errors import BrokerConfigError
from devicefabric.broker.hardening import REFUSAL_ATTRIBUTE
from devicefabric.broker.plugins import FabricAuthPlugin, FabricTopicPlugin
from devicefabric.config.credentials import password_for
from devicefabric.config.errors import ConfigError
from devicefabric.config.topics import Topics

T = Topics()
SECRET = b"unit-secret-0123456789abcdef"


def pw(user: str) -> str:
    return password_for(SECRET, user)


ADMISSIONS = [
    # username, password, client id, expected refusal
    ("tor9-99", pw("tor9-99"), "tor9-99", None),
    ("bridge", pw("bridge"), "bridge_pod-1", None),
    ("observer", pw("observer"), "observer_1", None),
    # an empty client id gets a generated one, without the role prefix: refused
    ("observer", pw("observer"), "amqtt/GENERATED", Refusal.CLIENT_ID_NOT_ALLOWED),
    ("observer", pw("observer"), "bridge_up", Refusal.CLIENT_ID_NOT_ALLOWED),
    ("bridge", pw("bridge"), "observer_1", Refusal.CLIENT_ID_NOT_ALLOWED),
    (None, pw("tor9-99"), "tor9-99", Refusal.NO_USERNAME),
    ("", "", "x", Refusal.NO_USERNAME),
    ("Tor9", "whatever", "Tor9", Refusal.INVALID_USERNAME),
    ("-bad-", "whatever", "-bad-", Refusal.INVALID_USERNAME),
    ("a" * 64, "whatever", "a" * 64, Refusal.INVALID_USERNAME),
    ("dev/ice", "whatever", "dev/ice", Refusal.INVALID_USERNAME),
    ("tor9-99", "wrong", "tor9-99", Refusal.BAD_PASSWORD),
    ("tor9-99", None, "tor9-99", Refusal.BAD_PASSWORD),
    ("tor9-99", pw("other"), "tor9-99", Refusal.BAD_PASSWORD),
    ("tor9-99", pw("bridge"), "tor9-99", Refusal.BAD_PASSWORD),
    ("bridge", pw("observer"), "bridge_1", Refusal.BAD_PASSWORD),
    ("revoked-1", pw("revoked-1"), "revoked-1", Refusal.REVOKED),
    ("revoked-1", "wrong", "revoked-1", Refusal.BAD_PASSWORD),  # no revocation news without pw
    ("tor9-99", pw("tor9-99"), "tor9-98", Refusal.CLIENT_ID_NOT_ALLOWED),
    ("tor9-99", pw("tor9-99"), "", Refusal.CLIENT_ID_NOT_ALLOWED),
    ("bridge", pw("bridge"), "tor9-99", Refusal.CLIENT_ID_NOT_ALLOWED),
    ("observer", pw("observer"), "x1", Refusal.CLIENT_ID_NOT_ALLOWED),
    ("observer", pw("observer"), "watcher", Refusal.CLIENT_ID_NOT_ALLOWED),
]


@pytest.fixture
def gatekeeper(tmp_path: Path) -> Gatekeeper:
    revoked = tmp_path / "revoked"
    revoked.write_text("# revoked devices\nrevoked-1\n\n  revoked-2  # stolen\n")
    return Gatekeeper(SECRET, T, RevocationList(revoked))


@pytest.mark.parametrize(("username", "password", "client_id", "expected"), ADMISSIONS)
def test_admission(
    gatekeeper: Gatekeeper,
    username: str | None,
    password: str | None,
    client_id: str,
    expected: Refusal | None,
) -> None:
    assert gatekeeper.admit(username, password, client_id) == expected


def test_the_secret_never_shows_in_a_repr(gatekeeper: Gatekeeper) -> None:
    assert "unit-secret" not in repr(gatekeeper)


def test_an_unexpected_error_is_a_refusal(gatekeeper: Gatekeeper) -> None:
    assert gatekeeper.admit("tor9-99", object(), "tor9-99") is Refusal.INTERNAL_ERROR  # type: ignore[arg-type]


def test_revocation_file_format() -> None:
    text = "a1\n# comment\n\n b2 \nc3 # trailing comment\nNot-A-Name\nbridge\n"
    assert parse_revocations(text) == {"a1", "b2", "c3"}


def test_revocation_list_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_text("a1\n")
    revocations = RevocationList(path)
    assert "a1" in revocations
    assert not revocations.refresh()
    path.write_text("a1\nb2\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    assert revocations.refresh()
    assert revocations.names == {"a1", "b2"}
    assert revocations.version == 1
    path.unlink()  # unreadable later: keep the last good list
    assert not revocations.refresh()
    assert revocations.names == {"a1", "b2"}


def test_an_unreadable_revocation_file_at_start_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match="--revoked-file") as info:
        RevocationList(tmp_path / "missing")
    assert isinstance(info.value, ConfigError)


def test_revocation_takes_effect_on_the_next_connect(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_text("")
    gatekeeper = Gatekeeper(SECRET, T, RevocationList(path))
    assert gatekeeper.admit("tor9-99", pw("tor9-99"), "tor9-99") is None
    path.write_text("tor9-99\n")
    os.utime(path, ns=(2, 2))
    assert gatekeeper.admit("tor9-99", pw("tor9-99"), "tor9-99") is Refusal.REVOKED


TOPIC_CHECKS = [
    # user, action, topic (or filter), allowed
    ("d1", Action.PUBLISH, T.status("d1"), True),
    ("d1", Action.PUBLISH, T.heartbeat("d1"), True),
    ("d1", Action.PUBLISH, T.report("d1"), True),
    ("d1", Action.PUBLISH, T.desired("d1"), False),
    ("d1", Action.PUBLISH, T.status("d2"), False),
    ("d1", Action.PUBLISH, T.bridge_status(), False),
    ("d1", Action.SUBSCRIBE, T.desired("d1"), True),
    ("d1", Action.SUBSCRIBE, T.status("d1"), True),
    ("d1", Action.SUBSCRIBE, T.bridge_status(), True),
    ("d1", Action.SUBSCRIBE, T.desired("d2"), False),
    ("d1", Action.SUBSCRIBE, "fabric/v1/devices/+/desired", False),
    ("d1", Action.SUBSCRIBE, "fabric/v1/#", False),
    ("d1", Action.SUBSCRIBE, "#", False),
    ("d1", Action.RECEIVE, T.desired("d1"), True),
    ("d1", Action.RECEIVE, T.report("d1"), False),
    ("d1", Action.RECEIVE, T.desired("d2"), False),
    ("bridge", Action.PUBLISH, T.desired("d1"), True),
    ("bridge", Action.PUBLISH, T.bridge_status(), True),
    ("bridge", Action.PUBLISH, T.status("d1"), False),
    ("bridge", Action.SUBSCRIBE, "fabric/v1/devices/+/status", True),
    ("bridge", Action.SUBSCRIBE, "fabric/v1/devices/+/report", True),
    ("bridge", Action.SUBSCRIBE, "fabric/v1/#", False),
    ("bridge", Action.RECEIVE, T.heartbeat("d9"), True),
    ("bridge", Action.RECEIVE, T.bridge_status(), False),
    ("observer", Action.SUBSCRIBE, "fabric/v1/#", True),
    ("observer", Action.SUBSCRIBE, "#", False),
    ("observer", Action.RECEIVE, T.report("d1"), True),
    ("observer", Action.PUBLISH, T.status("d1"), False),
    ("Bad Name", Action.RECEIVE, T.report("d1"), False),
    (None, Action.RECEIVE, T.report("d1"), False),
]


def _session(username: str | None, client_id: str = "c") -> Session:
    session = Session()
    session.username = username
    session.client_id = client_id
    return session


def _topic_plugin(gatekeeper: Gatekeeper) -> FabricTopicPlugin:
    class Context:
        config = FabricTopicPlugin.Config(gatekeeper=gatekeeper)

    return FabricTopicPlugin(Context())


@pytest.mark.parametrize(("user", "action", "topic", "allowed"), TOPIC_CHECKS)
def test_topic_plugin(
    gatekeeper: Gatekeeper, user: str | None, action: Action, topic: str, allowed: bool
) -> None:
    plugin = _topic_plugin(gatekeeper)
    decision = asyncio.run(
        plugin.topic_filtering(session=_session(user), topic=topic, action=action)
    )
    assert decision is allowed


@pytest.mark.parametrize(
    ("user", "topic", "allowed"),
    [
        ("d1", T.status("d1"), True),
        ("d1", T.report("d1"), False),
        ("d1", T.status("d2"), False),
        ("bridge", T.bridge_status(), True),
        ("bridge", T.desired("d1"), False),
        ("observer", T.status("d1"), False),
    ],
)
def test_will_rules(gatekeeper: Gatekeeper, user: str, topic: str, allowed: bool) -> None:
    plugin = _topic_plugin(gatekeeper)
    assert asyncio.run(plugin.will_filtering(session=_session(user), topic=topic)) is allowed


def test_auth_plugin_leaves_the_reason_for_the_log(gatekeeper: Gatekeeper) -> None:
    class Context:
        config = FabricAuthPlugin.Config(gatekeeper=gatekeeper)

    plugin = FabricAuthPlugin(Context())
    session = _session("tor9-99", "tor9-99")
    session.password = "wrong"
    assert asyncio.run(plugin.authenticate(session=session)) is False
    assert session.attributes[REFUSAL_ATTRIBUTE] == "bad_password"
    session.password = pw("tor9-99")
    assert asyncio.run(plugin.authenticate(session=session)) is True
