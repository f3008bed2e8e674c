"""What FCM's `messages:send` refuses, and how it says so.

The proto JSON parser first (unknown fields, wrong types, enum values), then FCM's own
rules: one target, string data without reserved keys, a ttl within four weeks, a token
that looks like one, at most 4 KB of data. Field names are taken in both spellings the
parser takes (`collapse_key` and `collapseKey`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fcmsim.errors import BAD_TOKEN_MESSAGE, ErrorCode, fcm_error, invalid_payload

TOKEN = re.compile(r"^[A-Za-z0-9_:-]{20,1024}$")
TTL = re.compile(r"^(\d+)(\.\d{1,9})?s$")
MAX_TTL = 28 * 24 * 3600
DATA_LIMIT = 4096
PRIORITIES = {"NORMAL": "NORMAL", "HIGH": "HIGH", "normal": "NORMAL", "high": "HIGH"}
"""AndroidMessagePriority: the enum's names, and the lower-case ones the parser takes too
(the Firebase Admin SDKs send those)."""
MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
}
ANDROID_FIELDS = {
    "collapse_key",
    "priority",
    "ttl",
    "restricted_package_name",
    "data",
    "notification",
    "fcm_options",
    "direct_boot_ok",
    "bandwidth_constrained_ok",
    "restricted_satellite_ok",
}
RESERVED_DATA = ("from", "message_type", "notification")
RESERVED_PREFIXES = ("google.", "gcm.")

Refusal = tuple[int, Any]


@dataclass(frozen=True)
class Message:
    """A message FCM accepted, as the simulated phone receives it."""

    token: str
    data: dict[str, str]
    priority: str
    """NORMAL or HIGH."""
    ttl: float
    """Seconds FCM keeps it for an offline device (0: now or never)."""
    collapse_key: str | None
    notification: dict[str, Any] | None


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _fields(obj: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any] | Refusal:
    out: dict[str, Any] = {}
    for name, value in obj.items():
        key = _snake(name)
        if key not in allowed:
            return invalid_payload(
                f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field.", where
            )
        out[key] = value
    return out


def _string_map(value: Any, where: str) -> dict[str, str] | Refusal:
    if not isinstance(value, dict):
        return invalid_payload(f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Struct)", where)
    for index, (key, item) in enumerate(value.items()):
        if not isinstance(item, str):
            return invalid_payload(f"Invalid value at '{where}[{index}].value' (TYPE_STRING), {item!r}", where)
        if key in RESERVED_DATA or key.startswith(RESERVED_PREFIXES):
            return fcm_error(ErrorCode.INVALID_ARGUMENT, f"Invalid data payload key: {key}", field=where)
    return dict(value)


def check(body: Any) -> Message | Refusal:
    if not isinstance(body, dict):
        return invalid_payload("Invalid JSON payload received. Expected an object.", "")
    for name in body:
        if _snake(name) not in ("message", "validate_only"):
            return invalid_payload(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.', "")
    raw = body.get("message")
    if not isinstance(raw, dict):
        return invalid_payload("Request contains an invalid argument.", "message")
    message = _fields(raw, MESSAGE_FIELDS, "message")
    if isinstance(message, tuple):
        return message
    targets = [name for name in ("token", "topic", "condition") if message.get(name)]
    if len(targets) != 1:
        return fcm_error(ErrorCode.INVALID_ARGUMENT, "Exactly one of token, topic or condition must be specified")
    token = message.get("token")
    if not isinstance(token, str):
        return fcm_error(ErrorCode.INVALID_ARGUMENT, "Only token targets are simulated", field="message")
    if not TOKEN.match(token):
        return fcm_error(ErrorCode.INVALID_ARGUMENT, BAD_TOKEN_MESSAGE, field="message.token")
    data: dict[str, str] = {}
    if "data" in message:
        checked = _string_map(message["data"], "message.data")
        if isinstance(checked, tuple):
            return checked
        data = checked
    android_raw = message.get("android", {})
    if not isinstance(android_raw, dict):
        return invalid_payload("Invalid value at 'message.android'", "message.android")
    android = _fields(android_raw, ANDROID_FIELDS, "message.android")
    if isinstance(android, tuple):
        return android
    if "data" in android:
        checked = _string_map(android["data"], "message.android.data")
        if isinstance(checked, tuple):
            return checked
        data = checked  # overrides the message's data
    priority = "NORMAL"
    if "priority" in android:
        value = android["priority"]
        if not isinstance(value, str) or value not in PRIORITIES:
            return invalid_payload(
                f"Invalid value at 'message.android.priority' "
                f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {value!r}",
                "message.android.priority",
            )
        priority = PRIORITIES[value]
    ttl = float(MAX_TTL)
    if "ttl" in android:
        value = android["ttl"]
        match = TTL.match(value) if isinstance(value, str) else None
        if match is None:
            return invalid_payload(
                f"Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), {value!r}",
                "message.android.ttl",
            )
        ttl = float(match.group(1))  # FCM rounds down to whole seconds
        if ttl > MAX_TTL:
            return fcm_error(
                ErrorCode.INVALID_ARGUMENT, "The ttl must be no more than 4 weeks", field="message.android.ttl"
            )
    collapse_key = android.get("collapse_key")
    if collapse_key is not None and not isinstance(collapse_key, str):
        return invalid_payload(
            f"Invalid value at 'message.android.collapse_key' (TYPE_STRING), {collapse_key!r}",
            "message.android.collapse_key",
        )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > DATA_LIMIT:
        return fcm_error(ErrorCode.INVALID_ARGUMENT, "Android message is too big", field="message")
    notification = message.get("notification")
    return Message(token, data, priority, ttl, collapse_key, notification if isinstance(notification, dict) else None)
