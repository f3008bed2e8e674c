"""The APNs provider token (ES256 JWT): one per key, shared by every connection.

aioapns 4.0 signs a token per connection (a new connection means a new JWT) on
`time.time()` with a 30-minute lifetime, and never reacts to ExpiredProviderToken.
Apple asks for a token refreshed no more often than every 20 minutes and at least
every 60; counting per key rather than per connection keeps that true however many
connections the pool opens.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

MIN_REFRESH_INTERVAL = 20 * 60
MAX_TOKEN_AGE = 60 * 60
DEFAULT_REFRESH_AFTER = 50 * 60


class ProviderTokens:
    """Issues the `authorization` header value; never logs or reprs the key or the token."""

    def __init__(
        self,
        key_pem: str,
        key_id: str,
        team_id: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh_after: float = DEFAULT_REFRESH_AFTER,
    ) -> None:
        if not MIN_REFRESH_INTERVAL <= refresh_after < MAX_TOKEN_AGE:
            raise ValueError("refresh_after must lie in [20 min, 60 min)")
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("an APNs auth key (.p8) is a P-256 EC private key")
        self._key = key
        self.key_id = key_id
        self.team_id = team_id
        self._clock = clock
        self._refresh_after = refresh_after
        self._header: str | None = None
        self._issued_at = 0.0
        self._forced = False
        self.issued = 0
        """How many tokens have been signed (for tests and metrics)."""

    def __repr__(self) -> str:
        return f"ProviderTokens(key_id={self.key_id!r}, team_id={self.team_id!r})"

    @property
    def issued_at(self) -> float:
        return self._issued_at

    def header(self) -> str:
        """The current `bearer <jwt>`; re-signed once it is `refresh_after` old."""
        now = self._clock()
        if self._header is None or now - self._issued_at >= self._refresh_after:
            self._issue(now, forced=False)
        assert self._header is not None
        return self._header

    def expired(self, header: str) -> bool:
        """APNs answered ExpiredProviderToken to `header`. Returns whether a retry may help.

        APNs judged the token over an hour old by its clock, so replacing it is not
        "too often" from APNs's side even if ours says it is younger. One forced
        refresh per 20 minutes at most, though: if APNs calls a fresh token expired
        too, our clock is behind and re-signing on every push would not help.
        """
        if header != self._header:
            return True  # another push already replaced it
        now = self._clock()
        if self._forced and now - self._issued_at < MIN_REFRESH_INTERVAL:
            return False
        self._issue(now, forced=True)
        return True

    def _issue(self, now: float, *, forced: bool) -> None:
        issued_at = int(now)
        token = jwt.encode(
            {"iss": self.team_id, "iat": issued_at}, self._key, algorithm="ES256", headers={"kid": self.key_id}
        )
        self._header = f"bearer {token}"
        self._issued_at = float(issued_at)
        self._forced = forced
        self.issued += 1
