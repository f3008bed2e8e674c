"""Request validation with Apple's rules, one check per documented reason.

Pure functions over header lists and bytes: the protocol layer decides the order
(route, then provider token, then headers, then payload, then device).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from apnsim.reasons import Reason

DEVICE_PATH_PREFIX = "/3/device/"
TOKEN_PATTERN = re.compile(r"[0-9a-fA-F]{64,}")
UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_COLLAPSE_ID_BYTES = 64
MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
PRIORITIES = frozenset({10, 5, 1})
DEFAULT_PRIORITY = 10

# A push type that belongs to an extension point must be sent to the bundle ID
# plus the suffix Apple prescribes for it.
TOPIC_SUFFIX_OF_PUSH_TYPE: dict[str, str] = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
    "widgets": ".push-type.widgets",
}
PUSH_TYPES = frozenset({"alert", "background", "mdm", *TOPIC_SUFFIX_OF_PUSH_TYPE})

# Headers whose repetition Apple answers with DuplicateHeaders.
SINGLE_VALUED_HEADERS = frozenset(
    {
        "authorization",
        "apns-id",
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-collapse-id",
    }
)


@dataclass(frozen=True)
class NotificationHeaders:
    apns_id: str | None
    topic: str
    push_type: str
    push_type_inferred: bool
    priority: int
    expiration: int | None
    collapse_id: str | None


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    values = header_values(headers, name)
    return values[0] if values else None


def check_route(method: str, path: str) -> str | Reason:
    """The device token named by the path, or why the path/method is refused."""
    if method != "POST":
        return Reason.METHOD_NOT_ALLOWED
    path = path.split("?", 1)[0]
    if path in (DEVICE_PATH_PREFIX, DEVICE_PATH_PREFIX.rstrip("/")):
        return Reason.MISSING_DEVICE_TOKEN
    if not path.startswith(DEVICE_PATH_PREFIX):
        return Reason.BAD_PATH
    token = path[len(DEVICE_PATH_PREFIX) :]
    if "/" in token:
        return Reason.BAD_PATH
    return token


def is_well_formed_token(token: str) -> bool:
    return TOKEN_PATTERN.fullmatch(token) is not None


def is_valid_apns_id(apns_id: str) -> bool:
    return UUID_PATTERN.fullmatch(apns_id) is not None


def bundle_id_of(topic: str) -> str:
    for suffix in sorted(TOPIC_SUFFIX_OF_PUSH_TYPE.values(), key=len, reverse=True):
        if topic.endswith(suffix):
            return topic[: -len(suffix)]
    return topic


def _push_type_of_topic(topic: str) -> str | None:
    for push_type, suffix in TOPIC_SUFFIX_OF_PUSH_TYPE.items():
        if topic.endswith(suffix):
            return push_type
    return None


def check_headers(headers: list[tuple[str, str]]) -> NotificationHeaders | Reason:
    for name in SINGLE_VALUED_HEADERS:
        if len(header_values(headers, name)) > 1:
            return Reason.DUPLICATE_HEADERS

    apns_id = first_header(headers, "apns-id")
    if apns_id is not None and not is_valid_apns_id(apns_id):
        return Reason.BAD_MESSAGE_ID

    topic = first_header(headers, "apns-topic")
    if not topic:
        return Reason.MISSING_TOPIC

    declared_push_type = first_header(headers, "apns-push-type")
    topic_push_type = _push_type_of_topic(topic)
    if declared_push_type is None:
        # iOS does not require the header; APNs then goes by the topic.
        push_type, inferred = topic_push_type or "alert", True
    else:
        push_type, inferred = declared_push_type, False
        if push_type not in PUSH_TYPES:
            return Reason.INVALID_PUSH_TYPE
        required_suffix = TOPIC_SUFFIX_OF_PUSH_TYPE.get(push_type)
        if required_suffix is not None and not topic.endswith(required_suffix):
            # The token of an extension point belongs to the suffixed topic only.
            return Reason.DEVICE_TOKEN_NOT_FOR_TOPIC
        if required_suffix is None and topic_push_type is not None:
            return Reason.INVALID_PUSH_TYPE

    raw_priority = first_header(headers, "apns-priority")
    if raw_priority is None:
        priority = DEFAULT_PRIORITY
    else:
        if not raw_priority.isdigit() or int(raw_priority) not in PRIORITIES:
            return Reason.BAD_PRIORITY
        priority = int(raw_priority)

    raw_expiration = first_header(headers, "apns-expiration")
    expiration: int | None = None
    if raw_expiration is not None:
        if not raw_expiration.isdigit():
            return Reason.BAD_EXPIRATION_DATE
        expiration = int(raw_expiration)

    collapse_id = first_header(headers, "apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
        return Reason.BAD_COLLAPSE_ID

    return NotificationHeaders(
        apns_id=apns_id,
        topic=topic,
        push_type=push_type,
        push_type_inferred=inferred,
        priority=priority,
        expiration=expiration,
        collapse_id=collapse_id,
    )


def max_payload_bytes(push_type: str) -> int:
    return MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES


def check_payload(body: bytes, push_type: str) -> dict[str, Any] | Reason:
    if not body.strip():
        return Reason.PAYLOAD_EMPTY
    if len(body) > max_payload_bytes(push_type):
        return Reason.PAYLOAD_TOO_LARGE
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return Reason.BAD_PAYLOAD
    if not isinstance(payload, dict):
        return Reason.BAD_PAYLOAD
    return payload


def new_apns_id() -> str:
    return str(uuid.uuid4()).upper()
