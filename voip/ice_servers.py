"""ICE servers for an app's media: the STUN and TURN URIs a deployment runs (RFC 7064,
RFC 7065), checked once at start, and short-lived TURN credentials for each user in the
form coturn checks without asking us (`use-auth-secret`, draft-uberti-behave-turn-rest-00):

    username   = "<expiry, unix seconds>:<user id>"
    credential = base64(HMAC-SHA1(TURN_SECRET, username))

coturn recomputes the credential from the username and the shared secret, and refuses a
username whose expiry has passed: no call between this service and the TURN server, no
state. Pure: the caller gives the time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from voip.clock import Clock

Scheme = Literal["stun", "stuns", "turn", "turns"]
SCHEMES: tuple[Scheme, ...] = ("stun", "stuns", "turn", "turns")
TURN_SCHEMES = frozenset({"turn", "turns"})
TRANSPORTS = frozenset({"udp", "tcp"})

# RFC 3986 reg-name, narrowed to what resolves: DNS labels of letters, digits and hyphens.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# stunURI = scheme ":" host [ ":" port ]  (RFC 7064 §3.1)
# turnURI = scheme ":" host [ ":" port ] [ "?transport=" transport ]  (RFC 7065 §3.1)
_URI = re.compile(r"^(?P<scheme>[A-Za-z]+):(?P<host>\[[^\]]*\]|[^:?\[\]]*)(?::(?P<port>[^?]*))?(?:\?(?P<query>.*))?$")

# The shortest TURN_SECRET accepted: every user holds an HMAC-SHA1 of a known username
# under it, so a short secret can be guessed offline, and whoever guesses it can mint
# credentials for anyone.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class IceUri:
    scheme: Scheme
    host: str
    port: int | None
    transport: str | None
    text: str
    """As configured (scheme in lower case): what clients are given."""

    @property
    def is_turn(self) -> bool:
        return self.scheme in TURN_SCHEMES


def parse_uri(text: str) -> IceUri:
    """One `stun:`, `stuns:`, `turn:` or `turns:` URI; ValueError says what is wrong."""
    if "@" in text:
        raise ValueError("no user or password in the URI (RFC 7064 and 7065 have none): TURN_SECRET makes them")
    match = _URI.match(text)
    if match is None:
        raise ValueError("not <scheme>:<host>[:<port>][?transport=udp|tcp]")
    scheme = match["scheme"].lower()
    if scheme not in SCHEMES:
        raise ValueError("the scheme must be stun, stuns, turn or turns")
    host = match["host"]
    if host.startswith("//"):
        raise ValueError("no // after the scheme (RFC 7064, RFC 7065): stun:host, turn:host")
    _check_host(host)
    port: int | None = None
    if match["port"] is not None:
        if not (match["port"].isascii() and match["port"].isdigit() and 0 < int(match["port"]) < 65536):
            raise ValueError("the port must be 1-65535")
        port = int(match["port"])
    transport: str | None = None
    if match["query"] is not None:
        if scheme not in TURN_SCHEMES:
            raise ValueError("a stun: or stuns: URI takes no ?query (RFC 7064)")
        name, _, value = match["query"].partition("=")
        if name != "transport" or value.lower() not in TRANSPORTS:
            raise ValueError("the only query is ?transport=udp or ?transport=tcp (RFC 7065)")
        transport = value.lower()
    return IceUri(cast(Scheme, scheme), host, port, transport, scheme + text[len(scheme) :])


def _check_host(host: str) -> None:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("not an IPv6 address in [brackets]") from None
        return
    if not host:
        raise ValueError("no host")
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.removesuffix(".").split(".")):
        raise ValueError("the host must be a DNS name, an IPv4 address or an [IPv6] address")


def parse_uris(texts: Sequence[str]) -> list[IceUri]:
    """Every URI, or ValueError naming the first bad one."""
    uris = []
    for number, text in enumerate(texts, 1):
        try:
            uris.append(parse_uri(text))
        except ValueError as exc:
            # Not echoed when it may hold a password ("turn:user:pass@host").
            shown = f"entry {number}" if "@" in text else repr(text)
            raise ValueError(f"{shown}: {exc}") from None
    return uris


@dataclass(frozen=True, slots=True)
class TurnCredential:
    username: str
    credential: str


def rest_api_credential(secret: bytes, user_id: str, expires_at: int) -> TurnCredential:
    """coturn's REST-API credential for `user_id`, good until `expires_at` (unix seconds).
    coturn reads the expiry up to the first ':', so a ':' in the user id is harmless."""
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"))


class IceServers:
    """What `GET /v1/ice-servers` answers: the STUN URIs in one entry, with no
    credentials; the TURN URIs in another, with a credential for the asking user that
    expires `ttl` seconds from now. No URIs configured: no entries (an app's ICE then
    gathers host candidates only, which is what an empty `iceServers` means to WebRTC)."""

    def __init__(self, uris: Sequence[IceUri], secret: str, ttl: int, clock: Clock) -> None:
        self.stun = [uri.text for uri in uris if not uri.is_turn]
        self.turn = [uri.text for uri in uris if uri.is_turn]
        if self.turn and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"TURN URIs need a secret of {MIN_SECRET_BYTES} bytes or more")
        self._secret = secret.encode()
        self.ttl = ttl
        self._clock = clock

    def for_user(self, user_id: str) -> dict[str, Any]:
        servers: list[dict[str, Any]] = []
        if self.stun:
            servers.append({"urls": list(self.stun)})
        if self.turn:
            expires_at = self._clock.now_ms() // 1000 + self.ttl
            credential = rest_api_credential(self._secret, user_id, expires_at)
            servers.append(
                {"urls": list(self.turn), "username": credential.username, "credential": credential.credential}
            )
        return {"ice_servers": servers, "ttl": self.ttl}
