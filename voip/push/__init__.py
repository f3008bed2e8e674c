"""Push delivery for calls: the `Notifier` interface, its APNs and FCM implementations,
the router between them by device platform, and the one between iOS apps by bundle id."""

from voip.push.apns import APNsConfig, APNsNotifier, APNsSender
from voip.push.apps import APNsApps
from voip.push.fcm import FCMConfig, FCMNotifier
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
from voip.push.platforms import PlatformNotifiers

__all__ = [
    "PAYLOAD_LIMITS",
    "APNsApps",
    "APNsConfig",
    "APNsNotifier",
    "APNsSender",
    "Caller",
    "Environment",
    "FCMConfig",
    "FCMNotifier",
    "Notifier",
    "Outcome",
    "PlatformNotifiers",
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
