"""A throwaway certificate authority for TLS listeners under test, made with `cryptography`.

`make_ca_and_server(directory)` writes a CA certificate, a server certificate the CA signed for
`localhost` and 127.0.0.1, and the server's key (mode 0600), as PEM files, and returns their paths
in the order brokers take them (`tls=(ca, cert, key)`): a client that trusts the CA connects to
127.0.0.1 over TLS. Both last a day (from five minutes ago, for clocks a little apart).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signed(
    builder: x509.CertificateBuilder,
    key: ec.EllipticCurvePrivateKey,
    by: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        builder.public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(by, hashes.SHA256())
    )


def make_ca_and_server(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key), as PEM files in `directory`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _signed(
        x509.CertificateBuilder()
        .subject_name(_name("devicefabric test CA"))
        .issuer_name(_name("devicefabric test CA"))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True),
        ca_key,
        ca_key,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    where = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _signed(
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .add_extension(x509.SubjectAlternativeName(where), critical=False),
        key,
        ca_key,
    )
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths[2].write_bytes(pem)
    paths[2].chmod(0o600)
    return paths
