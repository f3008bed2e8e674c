"""What the call's pushes see of push delivery: one platform-neutral `Push` in, one
`PushResult` out.

Shaped like matrix-org/sygnal: one notifier per platform behind `Notifier`, each
platform's rules inside its notifier. A notifier says where a device's push goes
(`address`), builds its own request and payload from a `Push`, and judges its
platform's answers into the same `Outcome` and `TokenDrop`, so a second platform is a
new notifier class and `voip/call_pushes.py` does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


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


class PushKind(StrEnum):
    """What a push about a call is for; the timeline's and `voip_pushes_total`'s `kind`."""

    INVITE = "invite"
    """Rings the device."""
    CANCEL = "cancel"
    """Ends a call that rang the device and left ringing."""
    ENDED = "ended"
    """Ends an answered call on a device in it."""
    MISSED_ALERT = "missed_alert"
    """A visible notification after an unanswered call."""


@dataclass(frozen=True, slots=True)
class Caller:
    id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Push:
    """One push about one call, in no platform's terms; the notifier builds the request."""

    kind: PushKind
    call_id: str
    address: dict[str, Any]
    """Where it goes: what `Notifier.address` gave for the device (JSON, kept with the
    call, so a cancellation goes where its invite went)."""
    deadline: float
    """UNIX seconds. No attempt is started after it; for an invite, the ring deadline."""
    caller: Caller | None = None
    """Invites and missed-call alerts."""
    status_url: str | None = None
    """Invites: where the woken app asks what to do."""
    reason: str | None = None
    """Cancellations and hang-ups: the status endpoint's reason for this device."""
    custom: dict[str, Any] | None = None
    """Invites: the app's own data for the call (`call.start`'s or the call hook's
    `custom`, a JSON object of 1 KiB or less), passed through as the payload's `custom`."""


@dataclass(frozen=True, slots=True)
class TokenDrop:
    """The platform says the device's token is no good: drop it."""

    registered_before: int | None
    """ms since the epoch: drop only a token registered before this (a device that
    registered it again since keeps it); `None`: whatever its age."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answer from a platform means, in terms every platform shares."""

    outcome: Outcome | None
    """Final outcome, or `None` to try again (within the deadline)."""
    drop_token: TokenDrop | None = None
    likely_cause: str | None = None


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
    drop_token: TokenDrop | None = None
    """Set when the platform's answer says the token itself is no good."""
    platform: str = "ios"
    """Which service answered: "ios" (APNs; the fields above are its) or "android" (FCM:
    `apns_id` is empty, `environment` and `push_type` are placeholders)."""
    message_id: str | None = None
    """FCM: the message's name (`projects/<p>/messages/<id>`) once accepted."""
    token_field: str = "voip_token"
    """The device record's field that holds `device_token` (`fcm_token` on Android)."""
    app: str = ""
    """Which app's credentials sent it (metrics' `app`): the iOS bundle id, the FCM project."""


class Notifier(Protocol):
    """One platform's push sender."""

    def address(self, device: dict[str, Any], kind: PushKind) -> dict[str, Any] | None:
        """Where a push of `kind` goes for this device record, or None if the device
        registered nothing this platform can reach it with for that kind."""
        ...

    async def notify(self, push: Push) -> PushResult:
        """Send, retrying within `push.deadline`; never raises for platform or network
        trouble: every outcome is a `PushResult`."""
        ...

    async def aclose(self) -> None: ...
