"""Who is asking: bearer JWTs for devices and operators, and per-call status capabilities."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Literal

import jwt

from voip.display_names import MAX_RAW_DISPLAY_NAME

Role = Literal["device", "operator"]
ROLES: tuple[Role, ...] = ("device", "operator")
ALGORITHM = "HS256"


class AuthError(Exception):
    """The credentials are missing, malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: Role
    # The JWT claim `name`, set by the app's backend: the caller's display name, which a
    # client cannot choose (VOIP_TRUST_CLIENT_NAMES).
    name: str | None = None


class Authenticator:
    # Verified tokens are remembered until they expire: an app polls the status endpoint
    # with the same token, and checking an HS256 JWT costs ~130 µs of CPU (PyJWT parses
    # JSON three times), a dict lookup well under one. Forged tokens are never cached.
    CACHE_SIZE = 50_000

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._verified: dict[str, tuple[Principal, float]] = {}
        # A separate key for capabilities, so that a capability can never pass as a JWT
        # signature or the other way round.
        self._capability_key = hmac.new(secret.encode(), b"voip/status-capability", hashlib.sha256).digest()

    def mint(self, user_id: str, role: Role = "device", ttl: float = 3600, *, name: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"sub": user_id, "role": role, "iat": now, "exp": now + int(ttl)}
        if name is not None:
            claims["name"] = name
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if expires > time.time():
                return principal
            del self._verified[token]
            raise AuthError("Signature has expired")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp", "role"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
        user_id, role = claims["sub"], claims["role"]
        if not isinstance(user_id, str) or not user_id or len(user_id) > 128:
            raise AuthError("bad sub claim")
        if role not in ROLES:
            raise AuthError("bad role claim")
        name = claims.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_RAW_DISPLAY_NAME):
            raise AuthError("bad name claim")
        principal = Principal(user_id=user_id, role=role, name=name or None)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def bearer(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("expected 'Authorization: Bearer <token>'")
        return self.verify(token.strip())

    # A capability lets one device of one call ask for that call's status, and nothing
    # else. It rides in the VoIP push, so an app woken in the background can ask at once.
    def capability(self, call_id: str, device_id: str, expires_at: int) -> str:
        mac = self._capability_mac(call_id, device_id, expires_at)
        return f"{expires_at}.{mac}"

    def check_capability(self, token: str, call_id: str, device_id: str) -> bool:
        expires, _, mac = token.partition(".")
        # Anything from outside: ASCII digits of a sane length, or no.
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and mac.isascii()):
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._capability_mac(call_id, device_id, int(expires)))

    def _capability_mac(self, call_id: str, device_id: str, expires_at: int) -> str:
        message = f"{call_id}\x00{device_id}\x00{expires_at}".encode()
        digest = hmac.new(self._capability_key, message, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()
