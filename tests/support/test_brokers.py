"""The broker fixtures' own contract: what other suites rely on (restart on the same port)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.brokers import BrokerProcess, BrokerStartError, prepare_mosquitto
from tests.support.mqtt import connack, connect


@pytest.mark.fabric_devices("fix-a")
@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
def test_restart_keeps_the_port_and_clients_can_come_back(
    any_broker: BrokerProcess, kill: bool
) -> None:
    port, pid = any_broker.port, any_broker.pid
    with connect(any_broker, "fix-a") as before:
        any_broker.restart(kill=kill)
        assert before.disconnected.wait(2.0)
    assert (any_broker.port, any_broker.running) == (port, True)
    assert any_broker.pid != pid
    code = connack(any_broker, "fix-a")
    assert code is not None
    assert not code.is_failure


@pytest.mark.mosquitto
def test_a_broker_that_cannot_start_says_why(tmp_path: Path, secret: bytes) -> None:
    first = prepare_mosquitto(tmp_path, secret, ["fix-a"])
    second = prepare_mosquitto(tmp_path, secret, ["fix-a"], port=first.port)
    first.start()
    try:
        with pytest.raises(BrokerStartError, match="already in use"):
            second.start()
    finally:
        first.stop()
        second.stop()
