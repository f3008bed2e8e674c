"""Push delivery for calls: the `Notifier` interface and its APNs implementation."""

from voip.push.apns import APNsConfig, APNsNotifier, APNsSender
from voip.push.interface import Environment, Notifier, Outcome, PushRequest, PushResult, PushType
from voip.push.payloads import (
    PAYLOAD_LIMITS,
    Caller,
    call_cancellation,
    call_ended,
    missed_call_alert,
    voip_invite,
)

__all__ = [
    "APNsConfig",
    "APNsNotifier",
    "APNsSender",
    "Caller",
    "Environment",
    "Notifier",
    "Outcome",
    "PAYLOAD_LIMITS",
    "PushRequest",
    "PushResult",
    "PushType",
    "call_cancellation",
    "call_ended",
    "missed_call_alert",
    "voip_invite",
]
