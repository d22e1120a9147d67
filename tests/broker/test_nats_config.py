"""The NATS cluster config generator: subject mapping, permissions from the rule table, node wiring.

Pure tables over `broker.nats`, and the `broker nats-config` command as an operator runs it (exit
code 2 with one line on bad input). The configs running for real are exercised by the conformance
suite on a 3-node cluster (tests/broker/test_conformance.py, kind `nats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devicefabric.broker.nats import (
    MQTT_SUB_SUBJECT,
    NatsNode,
    generate,
    node_configs,
    permissions_of,
    plan_nodes,
    route_password,
    subject_of,
)
from devicefabric.config.access import rules_for
from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import Topics
from tests.support.cli import run_cli

T = Topics()


def plain(password: str) -> str:
    return f"hash:{password}"


@pytest.mark.parametrize(
    ("topic_filter", "subject"),
    [
        ("fabric/v1/devices/d/status", "fabric.v1.devices.d.status"),
        ("fabric/v1/devices/+/desired", "fabric.v1.devices.*.desired"),
        ("fabric/v1/#", "fabric.v1.>"),
        ("fabric/v1/devices/_sync-ab-1/desired", "fabric.v1.devices._sync-ab-1.desired"),
    ],
)
def test_subject_mapping(topic_filter: str, subject: str) -> None:
    assert subject_of(topic_filter) == subject


def test_a_topic_with_a_dot_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'\.'"):
        subject_of("fabric/v1/devices/a.b/status")


def test_device_permissions_are_the_table() -> None:
    perms = permissions_of(rules_for("dev-a", T))
    own = (T.status("dev-a"), T.heartbeat("dev-a"), T.report("dev-a"), T.logs_reply("dev-a"))
    assert perms["publish"] == {"allow": [subject_of(f) for f in own]}
    allow = perms["subscribe"]["allow"]
    assert subject_of(T.desired("dev-a")) in allow
    assert subject_of(T.logs_request("dev-a")) in allow
    assert subject_of(T.desired("dev-b")) not in allow
    assert subject_of(T.logs_request("dev-b")) not in allow
    assert MQTT_SUB_SUBJECT in allow  # a QoS 1 subscription needs it
    assert "deny" not in perms["subscribe"]


def test_bridge_requests_logs_and_reads_the_replies() -> None:
    perms = permissions_of(rules_for("bridge", T))
    assert "fabric.v1.devices.*.logs.request" in perms["publish"]["allow"]
    assert "fabric.v1.devices.*.logs.reply" in perms["subscribe"]["allow"]
    assert "fabric.v1.devices.*.logs.reply" not in perms["publish"]["allow"]


def test_observer_reads_everything_but_the_logs_at_qos_0_and_publishes_nothing() -> None:
    perms = permissions_of(rules_for("observer", T))
    assert perms["publish"] == {"deny": [">"]}
    # ...except the logs (they can hold secrets): NATS applies a subscribe deny per message, at
    # QoS 0 only, so the observer gets no QoS 1 subscription (no `$MQTT.sub.>`)
    assert perms["subscribe"] == {
        "allow": ["fabric.v1", "fabric.v1.>"],
        "deny": ["fabric.v1.devices.*.logs", "fabric.v1.devices.*.logs.>"],
    }


def _nodes(count: int) -> list[NatsNode]:
    base = {"client": 4222, "cluster": 6222, "mqtt": 1883}
    return plan_nodes(["10.0.0.1"] * count, base, Path("/var/lib/nats"))


@pytest.mark.parametrize(("count", "replicas"), [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_stream_replicas_are_min_of_three_and_nodes(count: int, replicas: int) -> None:
    confs = node_configs(_nodes(count), [], route_secret="pw")
    assert {c["mqtt"]["stream_replicas"] for c in confs.values()} == {replicas}
    assert ("cluster" in confs["nats-0"]) is (count > 1)


def test_every_node_routes_to_every_other_and_has_its_own_store() -> None:
    confs = node_configs(_nodes(3), [], route_secret="pw", cluster_name="fleet-1")
    assert list(confs) == ["nats-0", "nats-1", "nats-2"]
    assert confs["nats-1"]["server_name"] == "nats-1"
    assert confs["nats-1"]["cluster"]["name"] == "fleet-1"
    assert confs["nats-1"]["cluster"]["routes"] == [
        "nats-route://route:pw@10.0.0.1:6222",
        "nats-route://route:pw@10.0.0.1:6224",
    ]
    assert confs["nats-1"]["cluster"]["authorization"] == {"user": "route", "password": "pw"}
    assert len({c["jetstream"]["store_dir"] for c in confs.values()}) == 3


def test_one_host_per_node_keeps_the_base_ports() -> None:
    base = {"client": 4222, "cluster": 6222, "mqtt": 1883}
    nodes = plan_nodes(["a", "b", "c"], base, Path("/s"))
    assert {n.mqtt for n in nodes} == {HostPort(h, 1883) for h in "abc"}


def test_users_are_mqtt_only_and_revoked_devices_are_left_out(tmp_path: Path) -> None:
    paths = generate(
        tmp_path, _nodes(2), ["dev-a", "dev-b"], b"s" * 32, revoked=["dev-b"], hasher=plain
    )
    conf: dict[str, Any] = json.loads(paths[0].read_text())
    users = {u["user"]: u for u in conf["authorization"]["users"]}
    assert set(users) == {"dev-a", "bridge", "observer"}
    assert all(u["allowed_connection_types"] == ["MQTT"] for u in users.values())
    assert users["dev-a"]["password"].startswith("hash:")
    assert paths[0].stat().st_mode & 0o777 == 0o600


def test_the_command_writes_bcrypt_configs(tmp_path: Path, secret: bytes) -> None:
    devices = tmp_path / "devices.txt"
    devices.write_text("tor9-99\n")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(secret + b"\n")
    out = tmp_path / "out"
    common = ("--out", str(out), "--devices", str(devices), "--secret-file", str(secret_file))
    result = run_cli("broker", "nats-config", *common, "--nodes", "3", "--bcrypt-rounds", "4")
    assert result.code == 0, result.err
    conf = json.loads((out / "nats-2.conf").read_text())
    assert conf["authorization"]["users"][0]["password"].startswith("$2b$04$")
    bad = run_cli("broker", "nats-config", *common, "--nodes", "0")
    assert bad.code == 2
    assert "--nodes" in bad.err
    assert len(bad.err.strip().splitlines()) == 1


def test_route_password_is_derived_from_the_secret_and_url_safe() -> None:
    one, other = route_password(b"s" * 32), route_password(b"t" * 32)
    assert one != other
    assert one == route_password(b"s" * 32)
    assert one.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize("name", ["", "a b", "x.y", "a/b"])
def test_a_cluster_name_nats_cannot_take_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="cluster name"):
        generate(tmp_path, _nodes(2), ["dev-a"], b"s" * 32, hasher=plain, cluster_name=name)
