"""A CA, a server certificate and a client certificate for redis-servers of a test's own
on TLS ports (`redis-server --tls-port`: one Redis, a cluster's nodes, a Sentinel set),
made with `cryptography` in the test's directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from tests.ports import free_port
from tests.redis_process import NO_PERSISTENCE
from voip.node import START_FAILURES, Node
from voip.settings import Settings


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    # For a client of a Redis that asks for one (`--tls-auth-clients yes`).
    client_cert: Path
    client_key: Path


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


def _issue(
    directory: Path,
    name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: list[x509.GeneralName],
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca[1], hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / f"{name}.key")
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_certificates(directory: Path, server_names: tuple[str, ...] = ()) -> Certificates:
    """A CA, a server certificate it signed for 127.0.0.1 and localhost (and
    `server_names`), and a client certificate. Without extended key usage, the server's
    certificate also serves as a client's: cluster nodes and Sentinels present it to
    each other."""
    ca_cert, ca_key, ca_path = make_ca(directory)
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        *(x509.DNSName(name) for name in server_names),
    ]
    cert, key = _issue(directory, "redis", (ca_cert, ca_key), names)
    client_cert, client_key = _issue(directory, "client", (ca_cert, ca_key), [])
    return Certificates(ca_path, cert, key, client_cert, client_key)


def server_tls_args(certificates: Certificates, *, client_certificates: bool = False) -> tuple[str, ...]:
    """redis-server's (or a Sentinel's) certificate, key and CA, and whether clients must
    show a certificate of their own; the TLS port is the caller's."""
    return (
        "--tls-cert-file",
        str(certificates.cert),
        "--tls-key-file",
        str(certificates.key),
        "--tls-ca-cert-file",
        str(certificates.ca),
        "--tls-auth-clients",
        "yes" if client_certificates else "no",
    )


def client_tls_options(certificates: Certificates) -> dict[str, Any]:
    """redis-py keyword arguments for a test's own look at a TLS Redis."""
    return {
        "ssl": True,
        "ssl_ca_certs": str(certificates.ca),
        "ssl_certfile": str(certificates.client_cert),
        "ssl_keyfile": str(certificates.client_key),
    }


def cli_tls_args(certificates: Certificates) -> tuple[str, ...]:
    return (
        "--tls",
        "--cacert",
        str(certificates.ca),
        "--cert",
        str(certificates.client_cert),
        "--key",
        str(certificates.client_key),
    )


def tls_options(certificates: Certificates) -> tuple[int, tuple[str, ...]]:
    """A free TLS port, and the redis-server arguments that serve it (clients need no
    certificate of their own). The plain port stays, for the test's own look inside."""
    port = free_port()
    return port, ("--tls-port", str(port), *server_tls_args(certificates), *NO_PERSISTENCE)


async def start_up_error(settings: Settings) -> str:
    """The one line a node built from `settings` logs when it cannot start on its Redis
    (`node.redis_unreachable`), with what it had built closed again."""
    node = await Node.build(settings)
    try:
        with capture_logs() as logs:
            with pytest.raises(START_FAILURES):
                await node.start()
    finally:
        await node.notifier.aclose()
        if node.apns_simulator is not None:
            await node.apns_simulator.stop()
        if node.fcm_simulator is not None:
            await node.fcm_simulator.stop()
        if node.status_pipe is not None:
            node.status_pipe.close()
        await node.connections.aclose()
    [line] = [entry for entry in logs if entry["event"] == "node.redis_unreachable"]
    return str(line["error"])
