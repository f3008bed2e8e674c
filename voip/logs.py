"""Structured logs: one JSON object per line on stderr, ours and the libraries' alike
(uvicorn, the SIP endpoint and aioapns log through the standard library).

Every event passes `redact` last, whoever logged it: callers should never log a secret,
but uvicorn prints request paths with their query strings, the websockets library prints
handshake headers at debug, and one careless `exc_info` can carry a header. So query
string values, JWTs, Authorization header values, digest responses, status capabilities,
passwords, TURN credentials and private keys are replaced before a line is written.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"

# Keys whose value is a secret whatever it looks like (structlog keyword arguments).
SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "access_token",
        "token",
        "jwt",
        "bearer",
        "cap",
        "capability",
        "status_url",
        "password",
        "passwd",
        "secret",
        "jwt_secret",
        "ha1",
        "digest_response",
        "private_key",
        "key_pem",
        "provider_token",
        "ticket",
        "sip_accounts",
        # Webhooks and the call hook (voip/webhooks/): a signature is a MAC of the secret.
        "signature",
        "voip_signature",
        "credential",
    }
)

_SECRET_SUFFIXES = ("_password", "_secret", "_token", "_authorization", "_private_key")

_Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]


def _query(match: re.Match[str]) -> str:
    # Parameter names stay (they tell how a client authenticated); values go.
    return "?" + re.sub(r"=[^&;]*", "=" + REDACTED, match.group(1))


_RULES: list[_Rule] = [
    (re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)", re.S), REDACTED),
    # An Authorization header however it is printed: "Authorization: Bearer x",
    # ('authorization', 'Bearer x'), b'authorization': b'bearer x', authorization=x.
    (re.compile(r"""(?i)((?:proxy-)?authorization['"]?\s*[:=,]\s*(?:b?['"])?)[^'"\r\n]+"""), rf"\1{REDACTED}"),
    # A SIP digest's parameters can be split from their header by quotes.
    (re.compile(r"""(?i)\b((?:response|cnonce)\s*=\s*)(?:"[^"\r\n]*"|'[^'\r\n]*'|[^\s,;'"]+)"""), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.?[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"\?([^\s\"'<>#?]*=[^\s\"'<>#]*)"), _query),
    # A password in a URL's user info: redis://:pw@host, https://user:pw@host.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\1{REDACTED}@"),
    # A Voip-Signature's MAC, however it is printed: "t=1767225600,v1=<64 hex>".
    (re.compile(r"(?i)\b(v1=)[0-9a-f]{16,}"), rf"\1{REDACTED}"),
    # A status capability: "<expiry seconds>.<24 base64url characters>".
    (re.compile(r"\b\d{9,12}\.[A-Za-z0-9_-]{24}(?![A-Za-z0-9_-])"), REDACTED),
    (
        re.compile(
            r"""(?i)(?<![a-z0-9])((?:\w*_)?(?:password|passwd|secret|ha1|access_token|ticket|credential))(['"]?\s*[:=]\s*(?:b?['"])?)[^\s'"&,;}]+"""
        ),
        rf"\1\2{REDACTED}",
    ),
]


# Words one of the rules needs. Most strings (ids, names, times) contain none of them and
# cost a few substring tests instead of a pass per rule (~0.6 µs instead of ~5).
_MARKERS = (
    "eyj",
    "v1=",
    "?",
    "authori",
    "response",
    "cnonce",
    "bearer",
    "basic",
    "private key",
    "passw",
    "secret",
    "ha1",
    "access_token",
    "ticket",
    "credential",
    "://",
)
_CAPABILITY = re.compile(r"\d{9,12}\.[A-Za-z0-9_-]{24}")


def _suspect(text: str) -> bool:
    lowered = text.lower()
    for marker in _MARKERS:
        if marker in lowered:
            return True
    return len(text) >= 34 and "." in text and _CAPABILITY.search(text) is not None


def redact_text(text: str) -> str:
    if not _suspect(text):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, MutableMapping):
        return {k: REDACTED if _secret_key(k) else _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "backslashreplace"))
    return redact_text(str(value))  # whatever the renderer would have printed of it


@functools.lru_cache(maxsize=4096)
def _secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.lower().replace("-", "_")
    return name in SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


# Written by the chains' own processors: nothing from outside.
_OURS = frozenset({"timestamp", "level", "logger"})


def redact(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """The last processor before rendering, in both chains."""
    return {k: v if k in _OURS else REDACTED if _secret_key(k) else _clean(v) for k, v in event.items()}


def configure(level: str = "info") -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    render: list[Processor] = [structlog.processors.format_exc_info, redact, structlog.processors.JSONRenderer()]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            *render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (PrintLogger writes the line and its newline apart), so a
        # stdlib record from another thread cannot land between them.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
