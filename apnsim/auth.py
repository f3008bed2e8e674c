"""Token-based provider authentication: ES256 JWTs signed with keys registered per team."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from apnsim.reasons import Reason

TOKEN_MAX_AGE = 60 * 60
"""Apple rejects provider tokens whose ``iat`` is more than one hour old."""

TOKEN_MIN_UPDATE_INTERVAL = 20 * 60
"""Apple: refresh the provider token no more than once every 20 minutes."""

FUTURE_IAT_TOLERANCE = 5 * 60
"""How far in the future an ``iat`` may lie before the token is called invalid (clock skew)."""


@dataclass(frozen=True)
class SigningKey:
    """An APNs auth key pair as a test provider holds it (the private half is the .p8 content)."""

    team_id: str
    key_id: str
    private_pem: str
    public_pem: str

    def provider_token(self, issued_at: int) -> str:
        return jwt.encode(
            {"iss": self.team_id, "iat": issued_at},
            self.private_pem,
            algorithm="ES256",
            headers={"kid": self.key_id},
        )


def generate_signing_key(team_id: str, key_id: str) -> SigningKey:
    """A fresh P-256 key pair, the kind Apple issues as AuthKey_<key id>.p8."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return SigningKey(team_id, key_id, private_pem, public_pem)


def public_pem_of(pem: str) -> str:
    """Accept either half of a key pair and return the public PEM."""
    if "PRIVATE KEY" in pem:
        private_key = serialization.load_pem_private_key(pem.encode(), password=None)
        public_key = private_key.public_key()
    else:
        public_key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("APNs provider keys are P-256 EC keys")
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class ProviderKey:
    team_id: str
    key_id: str
    public_pem: str
    bundle_ids: frozenset[str] | None
    """Apps of the team this key may push to; ``None`` means any topic."""


@dataclass(frozen=True)
class VerifiedToken:
    key: ProviderKey
    issued_at: int


class ProviderKeyring:
    def __init__(self) -> None:
        self._keys: dict[str, ProviderKey] = {}

    def register(
        self, team_id: str, key_id: str, public_key_pem: str, bundle_ids: Iterable[str] | None = None
    ) -> ProviderKey:
        key = ProviderKey(
            team_id=team_id,
            key_id=key_id,
            public_pem=public_pem_of(public_key_pem),
            bundle_ids=frozenset(bundle_ids) if bundle_ids is not None else None,
        )
        self._keys[key_id] = key
        return key

    def revoke(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def verify(self, token: str, now: float) -> VerifiedToken | Reason:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Reason.INVALID_PROVIDER_TOKEN
        key = self._keys.get(str(header.get("kid", "")))
        if header.get("alg") != "ES256" or key is None:
            return Reason.INVALID_PROVIDER_TOKEN
        try:
            claims = jwt.decode(
                token,
                key.public_pem,
                algorithms=["ES256"],
                issuer=key.team_id,
                # Age is judged against the simulator's clock below, not PyJWT's.
                options={"require": ["iss", "iat"], "verify_iat": False, "verify_exp": False},
            )
        except jwt.PyJWTError:
            return Reason.INVALID_PROVIDER_TOKEN
        issued_at = claims["iat"]
        if not isinstance(issued_at, int) or isinstance(issued_at, bool):
            return Reason.INVALID_PROVIDER_TOKEN
        if issued_at > now + FUTURE_IAT_TOLERANCE:
            return Reason.INVALID_PROVIDER_TOKEN
        if now - issued_at > TOKEN_MAX_AGE:
            return Reason.EXPIRED_PROVIDER_TOKEN
        return VerifiedToken(key, issued_at)


@dataclass
class ConnectionAuth:
    """What one HTTP/2 connection has shown of provider tokens so far."""

    token: str | None = None
    adopted_at: float | None = None
    authenticated: bool = False
    token_changes: list[float] = field(default_factory=list)

    def admit(
        self, token: str, keyring: ProviderKeyring, now: float, min_update_interval: float
    ) -> VerifiedToken | Reason:
        verified = keyring.verify(token, now)
        if isinstance(verified, Reason):
            return verified
        if token != self.token:
            if self.adopted_at is not None and now - self.adopted_at < min_update_interval:
                return Reason.TOO_MANY_PROVIDER_TOKEN_UPDATES
            if self.token is not None:
                self.token_changes.append(now)
            self.token = token
            self.adopted_at = now
        self.authenticated = True
        return verified
