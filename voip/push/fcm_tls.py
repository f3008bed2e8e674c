"""Which CAs the FCM sender trusts, for both of its clients: httpx to `messages:send` and
google-auth's requests transport to the key's `token_uri`. FCM_CA_FILE names them (a
private FCM-compatible server, the bundled simulator over TLS); without it, each library's
default bundle, as for Google's own endpoints.

A certificate refused is a configuration error that no retry mends, so it is told apart
from a connection that failed (`refused_certificate`)."""

from __future__ import annotations

import ssl
from typing import Any

from google.auth.transport.requests import Request


def httpx_verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """httpx's `verify`: a context that trusts `ca_file` alone, or True (its default)."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


class TokenRequest(Request):
    """google-auth's requests transport, verifying the token endpoint against `ca_file`
    (None: requests's default bundle). `verify` goes with every request rather than on the
    session: requests lets REQUESTS_CA_BUNDLE override a session's own `verify`."""

    def __init__(self, ca_file: str | None) -> None:
        super().__init__()
        self.ca_file = ca_file

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.ca_file:
            kwargs["verify"] = self.ca_file
        # google-auth leaves its transports' __call__ unannotated.
        return super().__call__(*args, **kwargs)  # type: ignore[no-untyped-call]


def refused_certificate(exc: BaseException) -> str | None:
    """OpenSSL's reason when `exc` comes of a server certificate this side did not trust
    ("unable to get local issuer certificate", "Hostname mismatch, ..."), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "certificate verify failed")
        current = current.__cause__ or current.__context__
    return None


def trusted(ca_file: str | None) -> str:
    """Which CAs were trusted, for an error message."""
    return f"trusting FCM_CA_FILE={ca_file}" if ca_file else "trusting the default CAs: no FCM_CA_FILE"
