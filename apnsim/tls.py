"""TLS as APNs speaks it: HTTP/2 only (ALPN `h2`), on the certificate `simtls` makes."""

from __future__ import annotations

import ssl
from pathlib import Path

from simtls import TLSMaterial

ALPN_H2 = "h2"


def server_ssl_context(material: TLSMaterial) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(material.cert_file), str(material.key_file))
    context.set_alpn_protocols([ALPN_H2])
    return context


def client_ssl_context(ca_file: str | Path) -> ssl.SSLContext:
    """A client context that trusts only the simulator's CA and offers ALPN h2."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols([ALPN_H2])
    return context
