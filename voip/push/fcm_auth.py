"""FCM's OAuth2 access token, from a service-account key, cached until shortly before it
expires.

google-auth does the exchange: it signs the JWT-bearer assertion (RS256, the key's
`private_key_id` as `kid`) and posts it to the key's `token_uri`. Its refresh is
synchronous (its `requests` transport), so it runs in a thread, once per token lifetime,
one refresh at a time however many pushes wait for it. google-auth puts Google's own
token endpoint in the assertion's `aud` whatever `token_uri` says; the bundled simulator
(fcmsim) accepts that, as Google does. The token endpoint's certificate is checked against
FCM_CA_FILE when it is set (`voip/push/fcm_tls.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

import structlog
from google.auth.exceptions import GoogleAuthError
from google.oauth2 import service_account

from voip.push.fcm_tls import TokenRequest, refused_certificate, trusted

log = structlog.get_logger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
REFRESH_MARGIN = 300.0
"""Seconds before its expiry that a token stops being used: a push never carries a
token that expires on its way."""
REQUIRED_FIELDS = ("type", "client_email", "private_key", "token_uri")


class AccessTokenError(Exception):
    """No access token: the token endpoint refused the key, or could not be reached."""

    def __init__(self, message: str, *, untrusted_certificate: bool = False) -> None:
        super().__init__(message)
        self.untrusted_certificate = untrusted_certificate
        """The token endpoint's TLS certificate was refused: no retry mends that."""


def check_service_account(info: Any) -> dict[str, Any]:
    """The key file's JSON if it is a service-account key; ValueError says what is wrong
    (never the key itself)."""
    if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in REQUIRED_FIELDS if not isinstance(info.get(name), str) or not info.get(name)]
    if missing:
        raise ValueError(f"not a service-account key: no {', '.join(missing)}")
    if info["type"] != "service_account":
        raise ValueError(f'type is {info["type"]!r}, not "service_account"')
    try:
        service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    except (ValueError, GoogleAuthError) as exc:
        raise ValueError(f"its private_key does not load ({type(exc).__name__})") from None
    return info


class AccessTokens:
    """The `authorization` header value for FCM; never logs or reprs the key or a token."""

    def __init__(
        self,
        info: dict[str, Any],
        *,
        refresh_margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
        ca_file: str | None = None,
    ) -> None:
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self.token_uri: str = info["token_uri"]
        self.ca_file = ca_file
        """The CAs the token endpoint's certificate is checked against (None: requests's default)."""
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._header: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self._request: TokenRequest | None = None
        self.refreshes = 0
        """Tokens fetched so far (tests and the bench read it)."""

    def __repr__(self) -> str:
        return f"AccessTokens(token_uri={self.token_uri!r})"

    def cached(self) -> str | None:
        """The header while the token has more than `refresh_margin` seconds left."""
        if self._header is not None and self._clock() < self._expires_at - self.refresh_margin:
            return self._header
        return None

    async def header(self) -> str:
        """`Bearer <token>`: the cached one, or a new one (one refresh for all waiters)."""
        if (header := self.cached()) is not None:
            return header
        async with self._lock:
            if (header := self.cached()) is not None:
                return header
            await asyncio.to_thread(self._refresh)
            assert self._header is not None
            return self._header

    def invalidate(self, header: str) -> None:
        """FCM said 401 to `header`: the next push fetches a new token (unless another
        push already did)."""
        if self._header == header:
            self._header = None

    def forget(self) -> None:
        """Drop the cached token: the next header is a new one."""
        self._header = None

    def _refresh(self) -> None:
        if self._request is None:
            self._request = TokenRequest(self.ca_file)
        try:
            self._credentials.refresh(self._request)
        except (GoogleAuthError, OSError) as exc:
            # OSError: requests's own, for a CA file gone since start.
            if (reason := refused_certificate(exc)) is not None:
                raise AccessTokenError(
                    f"the TLS certificate of the key's token_uri, {self.token_uri}, is not trusted: "
                    f"{reason} ({trusted(self.ca_file)})",
                    untrusted_certificate=True,
                ) from None
            # google-auth's message quotes the token endpoint's error, never the key.
            raise AccessTokenError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        expiry = self._credentials.expiry
        token = self._credentials.token
        if not token or expiry is None:
            raise AccessTokenError("the token endpoint answered without an access token")
        self._expires_at = expiry.replace(tzinfo=UTC).timestamp()
        self._header = f"Bearer {token}"
        self.refreshes += 1
        log.info("fcm.access_token", expires_in=round(self._expires_at - self._clock()), token_uri=self.token_uri)

    def close(self) -> None:
        if self._request is not None:
            self._request.session.close()
