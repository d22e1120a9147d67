"""The mosquitto generator as pure tables: the generated ACLs are the rule table, nothing more.

Tier 1: no broker runs here (tests/broker/test_conformance.py runs the generated files in a real
mosquitto). Expectations are computed from `config.access.rules_for` and from a PBKDF2
recomputed in the test, never copied from the generator.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any, Final

import pytest

from devicefabric.broker import mosquitto_cli
from devicefabric.broker.mosquitto import (
    CONF_NAME,
    DEFAULT_PLUGIN,
    DYNSEC_NAME,
    PACKET_OVERHEAD,
    QUEUE_FLOOR,
    MosquittoSettings,
    dynsec_config,
    generate,
    hash_password,
    mosquitto_conf,
    parse_name_list,
    role_name,
)
from devicefabric.config.access import rules_for
from devicefabric.config.credentials import password_for
from devicefabric.config.errors import ConfigError
from devicefabric.config.names import BRIDGE_USER, OBSERVER_USER
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import Topics

SECRET: Final = b"generator-secret-0123456789"
DEVICES: Final = ("tor9-99", "dev-a", "dev-b")
USERS: Final = (*DEVICES, BRIDGE_USER, OBSERVER_USER)


def _doc(root: str = "fabric/v1", revoked: tuple[str, ...] = ()) -> dict[str, Any]:
    return dynsec_config(DEVICES, SECRET, Topics(root), revoked=revoked)


def _client(doc: dict[str, Any], username: str) -> dict[str, Any]:
    (client,) = [c for c in doc["clients"] if c["username"] == username]
    assert isinstance(client, dict)
    return client


def _role_acls(doc: dict[str, Any], rolename: str) -> set[tuple[str, str, bool, int]]:
    """(acltype, topic, allow, priority) of each ACL of a role; priority 0 when not given."""
    (role,) = [r for r in doc["roles"] if r["rolename"] == rolename]
    return {
        (acl["acltype"], acl["topic"], acl["allow"], acl.get("priority", 0)) for acl in role["acls"]
    }


def _subscribe_type(topic_filter: str) -> str:
    wildcard = "+" in topic_filter or "#" in topic_filter
    return "subscribePattern" if wildcard else "subscribeLiteral"


@pytest.mark.parametrize("root", ["fabric/v1", "site-7/fabric"])
@pytest.mark.parametrize("user", USERS)
def test_each_users_acls_are_exactly_its_rules(user: str, root: str) -> None:
    rules = rules_for(user, Topics(root))
    expected = {("publishClientSend", f, True, 0) for f in rules.publish}
    for f in rules.receive:
        expected.add(("publishClientReceive", f, True, 0))
        expected.add((_subscribe_type(f), f, True, 0))
    for f in rules.deny_receive:  # checked before every allow: a higher priority
        expected.add(("publishClientReceive", f, False, 1))
        expected.add((_subscribe_type(f), f, False, 1))
    doc = _doc(root)
    assert _role_acls(doc, role_name(user)) == expected
    assert [r["rolename"] for r in _client(doc, user)["roles"]] == [role_name(user)]


def test_everything_the_table_does_not_grant_is_denied() -> None:
    assert _doc()["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_one_client_and_role_per_device_bound_to_its_client_id() -> None:
    doc = _doc()
    assert sorted(c["username"] for c in doc["clients"]) == sorted(USERS)
    assert sorted(r["rolename"] for r in doc["roles"]) == sorted(role_name(u) for u in USERS)
    assert len({role_name(u) for u in USERS}) == len(USERS)
    for device in DEVICES:
        assert _client(doc, device)["clientid"] == device
    for role in (BRIDGE_USER, OBSERVER_USER):
        assert "clientid" not in _client(doc, role)


@pytest.mark.parametrize("user", USERS)
def test_the_stored_hash_is_pbkdf2_sha512_of_the_derived_password(user: str) -> None:
    client = _client(_doc(), user)
    salt = base64.b64decode(client["salt"], validate=True)
    assert len(salt) == 12
    assert client["iterations"] == 101
    recomputed = hashlib.pbkdf2_hmac("sha512", password_for(SECRET, user).encode(), salt, 101)
    assert base64.b64decode(client["password"], validate=True) == recomputed


def test_salts_are_fresh_per_client_and_per_run() -> None:
    salts = [c["salt"] for c in _doc()["clients"]] + [c["salt"] for c in _doc()["clients"]]
    assert len(set(salts)) == len(salts)


def test_hash_password_rejects_a_salt_mosquitto_would_not_load() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        hash_password("pw", b"short")


def test_revoked_devices_are_written_disabled() -> None:
    doc = _doc(revoked=("dev-b", "not-listed"))
    assert _client(doc, "dev-b")["disabled"] is True
    assert all("disabled" not in _client(doc, u) for u in USERS if u != "dev-b")
    assert "not-listed" not in {c["username"] for c in doc["clients"]}


# -- inputs ----------------------------------------------------------------------------------------
def test_device_list_skips_blank_lines_and_comments() -> None:
    text = "# site 7\n\ntor9-99\n  dev-a  # rack 2\n"
    assert parse_name_list(text, "devices.txt") == ("tor9-99", "dev-a")


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("dev-a\ndev-b\nDev_C\n", 3, "DNS-1123"),
        ("dev-a\n\nbridge\n", 3, "reserved"),
        ("# x\n-dev\n", 2, "DNS-1123"),
        ("dev-a\ndev-b\ndev-a\n", 3, "listed twice (first on line 1)"),
        ("a" * 64 + "\n", 1, "at most 63"),
    ],
)
def test_a_bad_device_line_is_an_error_naming_the_line(text: str, line: int, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_name_list(text, "devices.txt")
    assert str(caught.value).startswith(f"devices.txt:{line}: ")
    assert why in str(caught.value)


def test_the_generator_refuses_invalid_names_given_directly() -> None:
    with pytest.raises(ConfigError):
        dynsec_config(["Not_A_Device"], SECRET, Topics())
    with pytest.raises(ConfigError):
        dynsec_config(["dev-a", "dev-a"], SECRET, Topics())


# -- mosquitto.conf --------------------------------------------------------------------------------
def _settings(**changes: Any) -> MosquittoSettings:
    base: dict[str, Any] = {
        "listener": HostPort("0.0.0.0", 8883),
        "dynsec_file": Path("/etc/mosquitto/fabric/dynamic-security.json"),
    }
    return MosquittoSettings(**(base | changes))


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_conf_is_one_listener_with_dynamic_security_only() -> None:
    assert _directives(mosquitto_conf(_settings())) == [
        "per_listener_settings false",
        "allow_anonymous false",
        "set_tcp_nodelay true",
        f"max_packet_size {64 * 1024 + PACKET_OVERHEAD}",
        f"max_queued_messages {QUEUE_FLOOR}",
        "persistence false",
        "listener 8883 0.0.0.0",
        f"plugin {DEFAULT_PLUGIN}",
        "plugin_opt_config_file /etc/mosquitto/fabric/dynamic-security.json",
    ]


def test_conf_options_persistence_user_and_plugin() -> None:
    text = mosquitto_conf(
        _settings(
            persistence_dir=Path("/var/lib/mosquitto"),
            user="mosquitto",
            plugin=Path("/opt/ds.so"),
        )
    )
    lines = _directives(text)
    assert "persistence true" in lines
    assert "persistence_location /var/lib/mosquitto/" in lines
    assert "user mosquitto" in lines
    assert "plugin /opt/ds.so" in lines
    assert not any(line.startswith(("password_file", "acl_file")) for line in lines)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"listener": HostPort("127.0.0.1", 0)}, "fixed port"),
        ({"max_payload": 0}, "must be positive"),
        ({"dynsec_file": Path("relative/ds.json")}, "absolute"),
        ({"user": "evil\nallow_anonymous true"}, "cannot be written"),
        ({"listener": HostPort("127.0.0.1\nlistener 1", 1883)}, "cannot be written"),
    ],
)
def test_conf_refuses_what_mosquitto_would_misread(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        mosquitto_conf(_settings(**changes))


# -- writing ---------------------------------------------------------------------------------------
def test_generate_writes_both_files_the_json_private(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    written = generate(out, DEVICES, SECRET, HostPort("127.0.0.1", 1884))
    assert (written.conf, written.dynsec) == (out / CONF_NAME, out / DYNSEC_NAME)
    assert stat.S_IMODE(written.dynsec.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.conf.stat().st_mode) == 0o644
    assert f"plugin_opt_config_file {out / DYNSEC_NAME}" in written.conf.read_text()
    doc = json.loads(written.dynsec.read_text())
    assert {c["username"] for c in doc["clients"]} == set(USERS)
    assert sorted(p.name for p in out.iterdir()) == sorted([CONF_NAME, DYNSEC_NAME])


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="devicefabric broker")
    mosquitto_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_writes_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "devices").write_text("dev-a\ndev-b\n")
    (tmp_path / "revoked").write_text("dev-b\n")
    (tmp_path / "secret").write_bytes(SECRET)
    argv = ["mosquitto-config", "--out", str(tmp_path / "out"), "--devices"]
    argv += [str(tmp_path / "devices"), "--secret-file", str(tmp_path / "secret")]
    argv += ["--revoked-file", str(tmp_path / "revoked"), "--mqtt", "0.0.0.0:1885"]
    assert _cli(argv) == 0
    conf = (tmp_path / "out" / CONF_NAME).read_text()
    assert "listener 1885 0.0.0.0" in conf
    doc = json.loads((tmp_path / "out" / DYNSEC_NAME).read_text())
    assert _client(doc, "dev-b")["disabled"] is True
    assert "2 devices, 1 revoked" in capsys.readouterr().out


def test_cli_errors_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "devices").write_text("dev-a\nDEV-B\n")
    (tmp_path / "secret").write_bytes(SECRET)
    argv = ["mosquitto-config", "--out", str(tmp_path / "out"), "--secret-file"]
    argv += [str(tmp_path / "secret"), "--devices", str(tmp_path / "devices")]
    with pytest.raises(ConfigError, match=r"devices:2: invalid device name 'DEV-B'"):
        _cli(argv)
    assert not (tmp_path / "out").exists()


def test_cli_requires_out_and_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICEFABRIC_DEVICES", raising=False)
    with pytest.raises(ConfigError, match="--devices is required"):
        _cli(["mosquitto-config", "--out", str(tmp_path)])
