"""What the call controller sees of push delivery: one request in, one result out.

Shaped like matrix-org/sygnal: one notifier per platform behind `Notifier`, so a
second platform (or a test double at the controller's level) plugs in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Environment(StrEnum):
    """The APNs environment a device token was issued for; a push must go to the same one."""

    SANDBOX = "sandbox"
    PRODUCTION = "production"


class PushType(StrEnum):
    VOIP = "voip"
    ALERT = "alert"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    """APNs accepted the push (200). It delivers it, or stores it until `apns-expiration`."""
    REJECTED = "rejected"
    """APNs refused it (or we did not send it) for a reason retrying cannot fix."""
    TOKEN_INVALID = "token_invalid"
    """410: the token is no longer valid; `timestamp` says since when."""
    EXPIRED = "expired"
    """The push's deadline passed before APNs accepted it; nothing is sent after it."""
    FAILED = "failed"
    """Transient trouble outlasted the attempts we allow, or the provider token is unusable."""


@dataclass(frozen=True, slots=True)
class PushRequest:
    device_token: str
    environment: Environment
    push_type: PushType
    topic: str
    payload: bytes
    """The JSON body exactly as it goes on the wire (its size is what APNs limits)."""
    apns_id: str
    """A UUID chosen by us; every attempt carries the same one."""
    deadline: float
    """UNIX seconds. No attempt is started after it; for an invite, the ring deadline."""
    priority: int = 10
    expiration: int | None = None
    """`apns-expiration`, UNIX seconds; `None` leaves it to APNs (30 days)."""
    collapse_id: str | None = None


@dataclass(frozen=True, slots=True)
class PushResult:
    apns_id: str
    device_token: str
    environment: Environment
    push_type: PushType
    outcome: Outcome
    status: int | None
    """HTTP status of the last answer from APNs; `None` if none came."""
    reason: str | None
    """APNs's reason string, or ours when APNs gave none (`PayloadTooLarge` before sending,
    `NoResponse`, `ConnectionLost`, ...)."""
    timestamp: int | None
    """410 only: ms since the epoch when APNs learned the token is invalid."""
    latency_ms: float
    """From `send()` being called to the final answer."""
    attempts: int
    """Requests written to APNs for this push (0 if it was refused before sending)."""
    likely_cause: str | None = None


class Notifier(Protocol):
    """One platform's push sender."""

    async def send(self, request: PushRequest) -> PushResult: ...

    async def aclose(self) -> None: ...
