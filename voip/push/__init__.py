"""Push delivery for calls: the `Notifier` interface and its APNs implementation."""

from voip.push.apns import APNsConfig, APNsNotifier, APNsSender
from voip.push.interface import (
    Caller,
    Environment,
    Notifier,
    Outcome,
    Push,
    PushKind,
    PushRequest,
    PushResult,
    PushType,
    TokenDrop,
    Verdict,
)
from voip.push.payloads import (
    PAYLOAD_LIMITS,
    call_cancellation,
    call_ended,
    missed_call_alert,
    voip_invite,
)

__all__ = [
    "PAYLOAD_LIMITS",
    "APNsConfig",
    "APNsNotifier",
    "APNsSender",
    "Caller",
    "Environment",
    "Notifier",
    "Outcome",
    "Push",
    "PushKind",
    "PushRequest",
    "PushResult",
    "PushType",
    "TokenDrop",
    "Verdict",
    "call_cancellation",
    "call_ended",
    "missed_call_alert",
    "voip_invite",
]
