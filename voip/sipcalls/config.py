"""What the SIP gateway needs from the settings, and where a callee that is not an app
user is dialled."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sip.message import URI, ParseError, parse_uri
from sip.transaction import TimerConfig


@dataclass(frozen=True)
class SipConfig:
    host: str = "127.0.0.1"
    port: int = 5060
    public_host: str = ""
    domain: str = ""
    transports: tuple[str, ...] = ("UDP", "TCP")
    # user -> password; HA1s stored in Redis (registrar.store_password) work as well.
    accounts: dict[str, str] = field(default_factory=dict)
    # INVITEs from elsewhere must authenticate as one of the accounts.
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    rate: float = 50.0
    burst: int = 100
    min_expires: int = 60
    max_expires: int = 3600
    nonce_ttl: int = 30
    trunk_host: str = ""
    trunk_pattern: str = r"^\+?[0-9]{3,15}$"
    trunk_username: str = ""
    trunk_password: str = ""
    digest_secret: bytes = b""
    timers: TimerConfig | None = None
    # SIP over TLS: a listener when tls_port is set (with its certificate and key), and
    # the CAs that TLS peers we connect to must chain to (empty: the system's).
    tls_port: int | None = None
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    # SIP over WebSocket: the node's HTTP port (`/v1/sip`), for our Via and Contact there.
    ws_port: int | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SipConfig:
        values: dict[str, Any] = {
            "host": settings.sip_host,
            "port": settings.sip_port,
            "public_host": settings.sip_public_host,
            "domain": settings.sip_domain,
            "transports": tuple(t.upper() for t in settings.sip_transports),
            "accounts": dict(settings.sip_accounts),
            "trusted_networks": tuple(settings.sip_trusted_networks),
            "digest_algorithms": tuple(settings.sip_digest_algorithms),
            "rate": settings.sip_rate,
            "burst": settings.sip_burst,
            "max_expires": settings.sip_max_expires,
            "nonce_ttl": settings.sip_nonce_ttl,
            "trunk_host": settings.sip_trunk_host,
            "trunk_pattern": settings.sip_trunk_pattern,
            "trunk_username": settings.sip_trunk_username,
            "trunk_password": settings.sip_trunk_password,
            "tls_port": settings.sip_tls_port,
            "tls_cert_file": settings.sip_tls_cert_file,
            "tls_key_file": settings.sip_tls_key_file,
            "tls_ca_file": settings.sip_tls_ca_file,
            "ws_port": settings.port,
            # Every node shares the JWT secret, so a digest nonce issued by one node is
            # accepted by the node that gets the retry.
            "digest_secret": hmac.new(settings.jwt_secret.encode(), b"sip-digest-nonces", hashlib.sha256).digest(),
        }
        values.update(overrides)
        return cls(**values)

    @property
    def advertised_host(self) -> str:
        return self.public_host or self.host

    @property
    def tls_enabled(self) -> bool:
        return self.tls_port is not None and bool(self.tls_cert_file and self.tls_key_file)

    def tls_server_context(self) -> ssl.SSLContext | None:
        if not self.tls_enabled:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def tls_client_context(self) -> ssl.SSLContext:
        """Verifies the peer's certificate and name, as for any TLS client (RFC 5922)."""
        return ssl.create_default_context(cafile=self.tls_ca_file or None)

    @property
    def realm(self) -> str:
        return self.domain or self.advertised_host

    def is_local_domain(self, uri: URI) -> bool:
        return uri.host.lower().strip("[]") in {h.lower() for h in (self.domain, self.public_host, self.host) if h}

    @cached_property
    def _trusted(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        # Parsed once: every SIP message asks (an ip_network costs more than the test).
        return tuple(ipaddress.ip_network(net, strict=False) for net in self.trusted_networks)

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def target_uri(self, callee: str) -> URI | None:
        """The URI to INVITE for `callee`: a `sip:`/`sips:` URI as given, or a number that
        matches the trunk pattern, sent to the trunk. None: an app user."""
        if callee.startswith(("sip:", "sips:")):
            try:
                uri = parse_uri(callee)
            except ParseError:
                return None
            return uri if uri.host else None
        if self.trunk_host and re.fullmatch(self.trunk_pattern, callee):
            return parse_uri(f"sip:{callee}@{self.trunk_host}")
        return None

    def is_sip_callee(self, callee: str) -> bool:
        return callee.startswith(("sip:", "sips:")) or (
            bool(self.trunk_host) and re.fullmatch(self.trunk_pattern, callee) is not None
        )
