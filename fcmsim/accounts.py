"""Service accounts and OAuth2 access tokens, as Google's token endpoint gives them.

A client signs a JWT-bearer assertion (RS256, `kid` the key's `private_key_id`, `iss`
the account's email, a scope, at most an hour between `iat` and `exp`) and posts it to
the key's `token_uri`; it gets an access token for an hour. The assertion's `aud` is the
key's `token_uri` or Google's own token endpoint: google-auth always writes Google's,
whatever `token_uri` says, and Google takes either.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPES = frozenset(
    {"https://www.googleapis.com/auth/firebase.messaging", "https://www.googleapis.com/auth/cloud-platform"}
)
ASSERTION_MAX_LIFETIME = 3600
CLOCK_SKEW = 300
TOKEN_LIFETIME = 3599
SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


@dataclass
class ServiceAccount:
    client_email: str
    key_id: str
    project_id: str
    public_key: rsa.RSAPublicKey = field(repr=False)
    disabled: bool = False


@dataclass(frozen=True)
class AccessToken:
    account: ServiceAccount
    scopes: frozenset[str]
    expires_at: float


def generate_service_account(project_id: str, token_uri: str, name: str = "fcm-sender") -> dict[str, Any]:
    """A service-account key file's JSON, as the Google Cloud console downloads it."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    email = f"{name}@{project_id}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }


class Accounts:
    """The accounts this simulator trusts, and the access tokens it issued."""

    def __init__(self, clock: Callable[[], float] = time.time, token_lifetime: float = TOKEN_LIFETIME) -> None:
        self.clock = clock
        self.token_lifetime = token_lifetime
        self._accounts: dict[str, ServiceAccount] = {}
        self._tokens: dict[str, AccessToken] = {}
        self.issued = 0

    def trust(self, key: dict[str, Any]) -> ServiceAccount:
        """Trust assertions signed by this key file's key (its public half is kept)."""
        private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("a service-account key is an RSA key")
        account = ServiceAccount(key["client_email"], key["private_key_id"], key["project_id"], private.public_key())
        self._accounts[account.client_email] = account
        return account

    def account(self, email: str) -> ServiceAccount:
        return self._accounts[email]

    def disable(self) -> None:
        """Every account is disabled: no new token, and the ones issued stop working."""
        for account in self._accounts.values():
            account.disabled = True

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working (FCM then answers 401)."""
        self._tokens.clear()

    def exchange(self, form: dict[str, str], token_uri: str) -> tuple[int, dict[str, Any]]:
        """The token endpoint: (status, JSON body)."""
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT: Failed audience check."}
        account = self._accounts.get(str(claims.get("iss", "")))
        if account is None or account.disabled:
            return 400, {"error": "invalid_grant", "error_description": "Invalid grant: account not found"}
        if header.get("alg") != "RS256" or header.get("kid") not in (None, account.key_id):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        try:
            jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=[token_uri, GOOGLE_TOKEN_URI],
                options={"verify_exp": False, "verify_iat": False, "require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.InvalidAudienceError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT: Failed audience check."}
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int | float) and isinstance(exp, int | float)):
            return 400, {"error": "invalid_grant", "error_description": SHORT_LIVED}
        if exp - iat > ASSERTION_MAX_LIFETIME or iat > now + CLOCK_SKEW or exp < now - CLOCK_SKEW:
            return 400, {"error": "invalid_grant", "error_description": SHORT_LIVED}
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes & FCM_SCOPES:
            return 400, {
                "error": "invalid_scope",
                "error_description": "Invalid OAuth scope or ID token audience provided.",
            }
        token = "ya29.sim-" + secrets.token_urlsafe(48)
        self._tokens[token] = AccessToken(account, scopes, now + self.token_lifetime)
        self.issued += 1
        return 200, {"access_token": token, "expires_in": int(self.token_lifetime), "token_type": "Bearer"}

    def issued_tokens(self) -> list[str]:
        """The access tokens issued and not revoked (for tests that look for them in logs)."""
        return list(self._tokens)

    def bearer(self, authorization: str | None) -> AccessToken | None:
        """The live access token an `authorization` header carries, else None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        access = self._tokens.get(token.strip())
        if access is None or access.expires_at <= self.clock() or access.account.disabled:
            return None
        return access
