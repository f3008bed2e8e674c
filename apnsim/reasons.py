"""Apple's response reasons and the HTTP status each one travels with.

Strings are exactly those of Apple's "Handling notification responses from APNs".
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    BAD_COLLAPSE_ID = "BadCollapseId"
    BAD_DEVICE_TOKEN = "BadDeviceToken"
    BAD_EXPIRATION_DATE = "BadExpirationDate"
    BAD_MESSAGE_ID = "BadMessageId"
    BAD_PRIORITY = "BadPriority"
    BAD_TOPIC = "BadTopic"
    DEVICE_TOKEN_NOT_FOR_TOPIC = "DeviceTokenNotForTopic"
    DUPLICATE_HEADERS = "DuplicateHeaders"
    IDLE_TIMEOUT = "IdleTimeout"
    INVALID_PUSH_TYPE = "InvalidPushType"
    MISSING_DEVICE_TOKEN = "MissingDeviceToken"
    MISSING_TOPIC = "MissingTopic"
    PAYLOAD_EMPTY = "PayloadEmpty"
    TOPIC_DISALLOWED = "TopicDisallowed"
    # Not in Apple's table: Apple documents no reason for a body that is not a
    # JSON dictionary, so the simulator names one (see docs/apns-simulator.md).
    BAD_PAYLOAD = "BadPayload"
    EXPIRED_PROVIDER_TOKEN = "ExpiredProviderToken"
    FORBIDDEN = "Forbidden"
    INVALID_PROVIDER_TOKEN = "InvalidProviderToken"
    MISSING_PROVIDER_TOKEN = "MissingProviderToken"
    BAD_PATH = "BadPath"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    EXPIRED_TOKEN = "ExpiredToken"
    UNREGISTERED = "Unregistered"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    TOO_MANY_PROVIDER_TOKEN_UPDATES = "TooManyProviderTokenUpdates"
    TOO_MANY_REQUESTS = "TooManyRequests"
    INTERNAL_SERVER_ERROR = "InternalServerError"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    SHUTDOWN = "Shutdown"


STATUS_OF: dict[Reason, int] = {
    Reason.BAD_COLLAPSE_ID: 400,
    Reason.BAD_DEVICE_TOKEN: 400,
    Reason.BAD_EXPIRATION_DATE: 400,
    Reason.BAD_MESSAGE_ID: 400,
    Reason.BAD_PRIORITY: 400,
    Reason.BAD_TOPIC: 400,
    Reason.DEVICE_TOKEN_NOT_FOR_TOPIC: 400,
    Reason.DUPLICATE_HEADERS: 400,
    Reason.IDLE_TIMEOUT: 400,
    Reason.INVALID_PUSH_TYPE: 400,
    Reason.MISSING_DEVICE_TOKEN: 400,
    Reason.MISSING_TOPIC: 400,
    Reason.PAYLOAD_EMPTY: 400,
    Reason.TOPIC_DISALLOWED: 400,
    Reason.BAD_PAYLOAD: 400,
    Reason.EXPIRED_PROVIDER_TOKEN: 403,
    Reason.FORBIDDEN: 403,
    Reason.INVALID_PROVIDER_TOKEN: 403,
    Reason.MISSING_PROVIDER_TOKEN: 403,
    Reason.BAD_PATH: 404,
    Reason.METHOD_NOT_ALLOWED: 405,
    Reason.EXPIRED_TOKEN: 410,
    Reason.UNREGISTERED: 410,
    Reason.PAYLOAD_TOO_LARGE: 413,
    Reason.TOO_MANY_PROVIDER_TOKEN_UPDATES: 429,
    Reason.TOO_MANY_REQUESTS: 429,
    Reason.INTERNAL_SERVER_ERROR: 500,
    Reason.SERVICE_UNAVAILABLE: 503,
    Reason.SHUTDOWN: 503,
}
