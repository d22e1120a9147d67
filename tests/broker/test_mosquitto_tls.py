"""The generated config with `--tls-cert/--tls-key` gives a TLS-only listener a real mosquitto serves.

The test makes its own CA and a server certificate for 127.0.0.1 with `cryptography`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.brokers import prepare_mosquitto, running
from tests.support.mqtt import ConnectRefusedError, connack, connect

pytestmark = pytest.mark.mosquitto


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca_and_server(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, server key), as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("devicefabric test CA"))
        .issuer_name(_name("devicefabric test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    paths[2].chmod(0o600)
    return paths


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
