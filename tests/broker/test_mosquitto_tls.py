"""The generated config with `--tls-cert/--tls-key` gives a TLS-only listener a real mosquitto serves.

The test makes its own CA and a server certificate for 127.0.0.1 (`tests.support.tls`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.brokers import prepare_mosquitto, running
from tests.support.mqtt import ConnectRefusedError, connack, connect
from tests.support.tls import make_ca_and_server

pytestmark = pytest.mark.mosquitto


def test_a_tls_listener_authenticates_over_tls_only(tmp_path: Path, secret: bytes) -> None:
    tls = make_ca_and_server(tmp_path)
    broker = prepare_mosquitto(tmp_path, secret, ["tls-a"], tls=tls)
    assert broker.url.startswith("mqtts://")
    with running(broker):
        with connect(broker, "tls-a") as device:
            assert device.publish(broker.topics.status("tls-a"), b"online")
        code = connack(broker, "tls-a", password="wrong")
        assert code is not None
        assert code.is_failure
        broker.tls_ca = None  # a client that does not speak TLS gets no CONNACK at all
        with pytest.raises(ConnectRefusedError) as refused:
            connect(broker, "tls-a", timeout=2.0)
        assert refused.value.reason_code is None
