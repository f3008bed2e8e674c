"""`Voip-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, on every
webhook and every call-hook request. The timestamp is inside what is signed, so a
receiver that refuses old timestamps refuses replays (docs/webhooks.md)."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Voip-Signature"
EVENT_ID_HEADER = "Voip-Event-Id"
# How old a signature a receiver should accept by default: clocks drift, retries do not
# re-sign an old timestamp (each attempt is signed when sent).
DEFAULT_TOLERANCE = 300


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The header's value for `body` sent at `timestamp` (UNIX seconds)."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: int = DEFAULT_TOLERANCE
) -> bool:
    """What a receiver does (docs/webhooks.md shows the same in a few lines): the `t` within
    `tolerance` seconds of now, and one `v1` that matches, compared in constant time."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    stamps = parts.get("t", [])
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit() or len(stamps[0]) > 12:
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))
