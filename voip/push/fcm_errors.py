"""What an FCM HTTP v1 answer means, in every platform's terms: the push's outcome,
whether to try again, whether the token is to be dropped, and why.

FCM answers errors as Google APIs do, `{"error": {"code", "message", "status", "details"}}`,
with the FCM error code in a detail of type `google.firebase.fcm.v1.FcmError`
(`UNREGISTERED`, `INVALID_ARGUMENT`, `QUOTA_EXCEEDED`, `UNAVAILABLE`, `INTERNAL`,
`SENDER_ID_MISMATCH`, `THIRD_PARTY_AUTH_ERROR`), and, for a bad field, a
`google.rpc.BadRequest` detail naming it (`message.token` for a bad registration token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voip.push.interface import Outcome, TokenDrop, Verdict

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class FCMError:
    """One error answer, read defensively: any field may be missing."""

    status: int
    code: str | None
    """The FCM error code (`UNREGISTERED`, ...), else the Google status (`UNAVAILABLE`, ...)."""
    message: str
    fields: tuple[str, ...]
    """Fields a `BadRequest` detail names."""

    @property
    def bad_token(self) -> bool:
        """INVALID_ARGUMENT about the registration token itself, not about the message."""
        if self.code != "INVALID_ARGUMENT":
            return False
        return "message.token" in self.fields or "registration token" in self.message.lower()


def parse_error(status: int, body: Any) -> FCMError:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return FCMError(status, None, "", ())
    code: str | None = None
    fields: list[str] = []
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            code = detail["errorCode"]
        if detail.get("@type") == BAD_REQUEST_TYPE:
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, dict) and isinstance(violation.get("field"), str):
                    fields.append(violation["field"])
    if code is None and isinstance(error.get("status"), str):
        code = error["status"]
    message = error.get("message")
    return FCMError(status, code, message if isinstance(message, str) else "", tuple(fields))


def likely_cause(error: FCMError) -> str | None:
    match error.code:
        case "UNREGISTERED" | "NOT_FOUND":
            return "the app was uninstalled, or its token expired or was replaced: drop the token"
        case "INVALID_ARGUMENT" if error.bad_token:
            return "the registration token is not a valid FCM token (malformed, or truncated by the app)"
        case "INVALID_ARGUMENT":
            return f"a bug in the push sender: FCM refused the message ({error.message[:120]})"
        case "SENDER_ID_MISMATCH":
            return (
                "the token belongs to another Firebase project: FCM_PROJECT_ID or FCM_CREDENTIALS_FILE "
                "is not the project the app registered with"
            )
        case "THIRD_PARTY_AUTH_ERROR":
            return "FCM could not reach APNs or the web push service for this token (a non-Android token)"
        case "QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED":
            return "over FCM's sending quota (for the project or this device)"
        case "UNAUTHENTICATED":
            return "the access token was refused: the service account is disabled or lacks FCM rights"
        case "PERMISSION_DENIED":
            return "the service account may not send for FCM_PROJECT_ID"
        case "UNAVAILABLE" | "INTERNAL":
            return "FCM is having trouble; transient"
    if error.status in RETRY_STATUSES:
        return "FCM is having trouble; transient"
    return None


def judge(error: FCMError | None, status: int, sent_at_ms: int) -> Verdict:
    """`sent_at_ms`: when the answered request was written. FCM gives no time for a
    token's death, so the token is dropped only if it was registered before the request
    that was refused (the rule APNs's 410 timestamp sets): a phone that registered a
    token since keeps it."""
    if status == 200:
        return Verdict(Outcome.ACCEPTED)
    error = error or FCMError(status, None, "", ())
    cause = likely_cause(error)
    if status == 404 or error.code == "UNREGISTERED":
        return Verdict(Outcome.TOKEN_INVALID, TokenDrop(registered_before=sent_at_ms), likely_cause=cause)
    if error.bad_token:
        return Verdict(Outcome.TOKEN_INVALID, TokenDrop(registered_before=sent_at_ms), likely_cause=cause)
    if status in RETRY_STATUSES:
        return Verdict(None, likely_cause=cause)
    return Verdict(Outcome.REJECTED, likely_cause=cause)
