"""A CA and a server certificate for a redis-server of a test's own on a TLS port
(`redis-server --tls-port`), made with `cryptography` in the test's directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_port
from tests.redis_process import NO_PERSISTENCE


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_ca(directory: Path, name: str = "test-ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_certificates(directory: Path) -> Certificates:
    """A CA, and a certificate it signed for 127.0.0.1 and localhost."""
    ca_cert, ca_key, ca_path = make_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("redis"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "redis.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / "redis.key")
    return Certificates(ca_path, directory / "redis.pem", directory / "redis.key")


def tls_options(certificates: Certificates) -> tuple[int, tuple[str, ...]]:
    """A free TLS port, and the redis-server arguments that serve it (clients need no
    certificate of their own). The plain port stays, for the test's own look inside."""
    port = free_port()
    return port, (
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(certificates.cert),
        "--tls-key-file",
        str(certificates.key),
        "--tls-ca-cert-file",
        str(certificates.ca),
        "--tls-auth-clients",
        "no",
        *NO_PERSISTENCE,
    )
