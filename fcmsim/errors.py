"""FCM's error answers, shaped as Google's APIs send them: `{"error": {"code", "message",
"status", "details"}}`, the FCM error code in a `google.firebase.fcm.v1.FcmError` detail,
a bad field in a `google.rpc.BadRequest` one."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


class ErrorCode(StrEnum):
    """FCM HTTP v1's `ErrorCode` enum."""

    UNSPECIFIED_ERROR = "UNSPECIFIED_ERROR"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNREGISTERED = "UNREGISTERED"
    SENDER_ID_MISMATCH = "SENDER_ID_MISMATCH"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    THIRD_PARTY_AUTH_ERROR = "THIRD_PARTY_AUTH_ERROR"


# Each FCM error code: its HTTP status, Google status and the message FCM gives.
ANSWERS: dict[ErrorCode, tuple[int, str, str]] = {
    ErrorCode.UNSPECIFIED_ERROR: (500, "INTERNAL", "Internal error encountered."),
    ErrorCode.INVALID_ARGUMENT: (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    ErrorCode.UNREGISTERED: (404, "NOT_FOUND", "Requested entity was not found."),
    ErrorCode.SENDER_ID_MISMATCH: (403, "PERMISSION_DENIED", "SenderId mismatch"),
    ErrorCode.QUOTA_EXCEEDED: (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'.",
    ),
    ErrorCode.UNAVAILABLE: (503, "UNAVAILABLE", "The service is currently unavailable."),
    ErrorCode.INTERNAL: (500, "INTERNAL", "Internal error encountered."),
    ErrorCode.THIRD_PARTY_AUTH_ERROR: (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
STATUS_OF = {code: answer[0] for code, answer in ANSWERS.items()}

BAD_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def google_error(status: int, google_status: str, message: str, details: list[dict[str, Any]] | None = None) -> Any:
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if details:
        error["details"] = details
    return {"error": error}


def fcm_error(code: ErrorCode, message: str | None = None, *, field: str | None = None) -> tuple[int, Any]:
    """(HTTP status, body) of an FCM error; `field` adds the BadRequest detail naming it."""
    status, google_status, default = ANSWERS[code]
    message = message or default
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR_TYPE, "errorCode": code.value}]
    if field is not None:
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": field, "description": message}]})
    return status, google_error(status, google_status, message, details)


def invalid_payload(message: str, field: str) -> tuple[int, Any]:
    """A body the API's JSON parser or schema refuses: INVALID_ARGUMENT, no FcmError detail."""
    details = [{"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": field, "description": message}]}]
    return 400, google_error(400, "INVALID_ARGUMENT", message, details)


def unauthenticated() -> tuple[int, Any]:
    return 401, google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE)


def permission_denied(project: str) -> tuple[int, Any]:
    return 403, google_error(
        403, "PERMISSION_DENIED", f"Permission 'cloudmessaging.messages.create' denied on resource 'projects/{project}'"
    )
