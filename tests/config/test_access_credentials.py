"""Tier 1: the access-rule table and credential derivation."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from devicefabric.config.access import Role, client_id_allowed, role_of, rules_for
from devicefabric.config.credentials import (
    check_password,
    device_password,
    load_secret,
    password_for,
    role_password,
)
from devicefabric.config.errors import InvalidDeviceNameError, SecretError
from devicefabric.config.topics import Topics

T = Topics()
SECRET = b"0123456789abcdef0123"

# Rows: user, action, topic, and whether the rule table allows it.
TABLE = [
    ("d1", "publish", T.status("d1"), True),
    ("d1", "publish", T.heartbeat("d1"), True),
    ("d1", "publish", T.report("d1"), True),
    ("d1", "publish", T.desired("d1"), False),
    ("d1", "publish", T.status("d2"), False),
    ("d1", "publish", T.report("d2"), False),
    ("d1", "publish", T.bridge_status(), False),
    ("d1", "will", T.status("d1"), True),
    ("d1", "will", T.report("d1"), False),
    ("d1", "will", T.status("d2"), False),
    ("d1", "receive", T.desired("d1"), True),
    ("d1", "receive", T.status("d1"), True),
    ("d1", "receive", T.bridge_status(), True),
    ("d1", "receive", T.desired("d2"), False),
    ("d1", "receive", T.report("d2"), False),
    ("d1", "receive", T.heartbeat("d1"), False),
    ("bridge", "publish", T.desired("d1"), True),
    ("bridge", "publish", T.bridge_status(), True),
    ("bridge", "publish", T.status("d1"), False),
    ("bridge", "publish", T.report("d1"), False),
    ("bridge", "will", T.bridge_status(), True),
    ("bridge", "will", T.desired("d1"), False),
    ("bridge", "receive", T.status("d1"), True),
    ("bridge", "receive", T.heartbeat("d1"), True),
    ("bridge", "receive", T.report("d1"), True),
    ("bridge", "receive", T.desired("d1"), True),
    ("bridge", "receive", "other/topic", False),
    ("observer", "publish", T.status("d1"), False),
    ("observer", "publish", T.bridge_status(), False),
    ("observer", "will", T.bridge_status(), False),
    ("observer", "receive", T.report("d1"), True),
    ("observer", "receive", T.bridge_status(), True),
    ("observer", "receive", "other/topic", False),
    # logs: only the bridge requests, only the device replies on its own topic, no one else reads
    ("bridge", "publish", T.logs_request("d1"), True),
    ("bridge", "receive", T.logs_reply("d1"), True),
    ("bridge", "publish", T.logs_reply("d1"), False),
    ("bridge", "receive", T.logs_request("d1"), False),
    ("d1", "publish", T.logs_reply("d1"), True),
    ("d1", "receive", T.logs_request("d1"), True),
    ("d1", "publish", T.logs_request("d1"), False),
    ("d1", "publish", T.logs_request("d2"), False),
    ("d1", "publish", T.logs_reply("d2"), False),
    ("d1", "receive", T.logs_request("d2"), False),
    ("d1", "receive", T.logs_reply("d1"), False),
    ("d1", "receive", T.logs_reply("d2"), False),
    ("d1", "will", T.logs_reply("d1"), False),
    ("observer", "receive", T.logs_request("d1"), False),
    ("observer", "receive", T.logs_reply("d1"), False),
    ("observer", "receive", f"{T.root}/devices/d1/logs", False),  # `logs/#` matches its parent
    ("observer", "receive", f"{T.root}/devices/d1/logsx/reply", True),  # not a logs topic
    ("observer", "publish", T.logs_request("d1"), False),
    ("Not-A-Device", "receive", T.status("d1"), False),
    ("Not-A-Device", "publish", T.status("d1"), False),
]


@pytest.mark.parametrize(("user", "action", "topic", "allowed"), TABLE)
def test_rule_table(user: str, action: str, topic: str, allowed: bool) -> None:
    rules = rules_for(user, T)
    assert getattr(rules, f"may_{action}")(topic) is allowed


@pytest.mark.parametrize(
    ("user", "flt", "allowed"),
    [
        ("d1", T.desired("d1"), True),
        ("d1", "fabric/v1/devices/+/desired", False),
        ("d1", "#", False),
        ("bridge", "fabric/v1/devices/+/report", True),
        ("bridge", "fabric/v1/devices/#", False),
        ("observer", "fabric/v1/#", True),
        ("observer", "#", False),
        ("observer", "fabric/v1/#/x", False),
        # a filter inside the observer's logs deny is refused; a wider one is granted and its
        # logs deliveries are refused one by one (`may_receive`)
        ("observer", "fabric/v1/devices/+/logs/reply", False),
        ("observer", "fabric/v1/devices/d1/logs/request", False),
        ("observer", "fabric/v1/devices/+/logs/#", False),
        ("observer", "fabric/v1/devices/+/logs/+", False),
        ("observer", "fabric/v1/devices/#", True),
        ("observer", "fabric/v1/devices/d1/+/reply", True),
        ("bridge", "fabric/v1/devices/+/logs/reply", True),
        ("bridge", "fabric/v1/devices/+/logs/request", False),
        ("bridge", "fabric/v1/devices/+/logs/#", False),
        ("d1", T.logs_request("d1"), True),
        ("d1", T.logs_request("d2"), False),
        ("d1", "fabric/v1/devices/+/logs/request", False),
    ],
)
def test_subscribe(user: str, flt: str, allowed: bool) -> None:
    assert rules_for(user, T).may_subscribe(flt) is allowed


@pytest.mark.parametrize(
    ("user", "client_id", "ok"),
    [
        ("d1", "d1", True),
        ("d1", "d2", False),
        ("d1", "", False),
        ("bridge", "bridge_pod-1", True),
        ("bridge", "d1", False),
        ("observer", "observer_1", True),
        ("observer", "tor9-99", False),
        ("observer", "", False),
        ("observer", "bridge_up", False),  # an observer cannot take the bridge's session over
        ("bridge", "observer_1", False),
        ("observer", "watcher", False),
        ("observer", "observer_", False),
        ("bridge", "bridge", False),
        ("BAD", "BAD", False),
    ],
)
def test_client_ids(user: str, client_id: str, ok: bool) -> None:
    assert client_id_allowed(user, client_id) is ok


def test_roles() -> None:
    assert role_of("bridge") is Role.BRIDGE
    assert role_of("observer") is Role.OBSERVER
    assert role_of("d1") is Role.DEVICE
    assert role_of("D1") is None


def test_device_password_is_the_documented_hmac() -> None:
    digest = hmac.new(SECRET, b"tor9-99", hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert device_password(SECRET, "tor9-99") == expected
    assert "=" not in expected
    assert check_password(SECRET, "tor9-99", expected)
    assert not check_password(SECRET, "tor9-98", expected)
    assert not check_password(SECRET, "tor9-99", expected[:-1])
    assert not check_password(SECRET, "tor9-99", None)
    assert not check_password(SECRET, "NOT VALID", expected)


def test_role_passwords_are_in_their_own_domain() -> None:
    bridge, observer = role_password(SECRET, "bridge"), role_password(SECRET, "observer")
    assert bridge != observer
    assert password_for(SECRET, "bridge") == bridge
    assert check_password(SECRET, "observer", observer)
    assert not check_password(SECRET, "observer", bridge)
    # The HMAC input of a role contains ':', which no device name can.
    with pytest.raises(InvalidDeviceNameError):
        device_password(SECRET, "role:bridge")
    with pytest.raises(SecretError):
        role_password(SECRET, "admin")


def test_secret_sources(tmp_path: Path) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_text("from-file-0123456789\n")
    env = {"DEVICEFABRIC_SECRET": "from-env-0123456789"}
    assert load_secret(secret_file, tmp_path, environ=env) == b"from-file-0123456789"
    assert load_secret(None, tmp_path, environ=env) == b"from-env-0123456789"
    with pytest.raises(SecretError, match="no fabric secret"):
        load_secret(None, tmp_path / "state", environ={})
    created = load_secret(None, tmp_path / "state", create=True, environ={})
    assert len(created) >= 32
    assert (tmp_path / "state" / "secret").stat().st_mode & 0o777 == 0o600
    assert load_secret(None, tmp_path / "state", environ={}) == created
    (tmp_path / "short").write_text("short")
    with pytest.raises(SecretError, match="at least 16"):
        load_secret(tmp_path / "short", environ={})
    with pytest.raises(SecretError, match="cannot read"):
        load_secret(tmp_path / "missing", environ={})
