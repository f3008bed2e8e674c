"""What an APNs answer means, in every platform's terms: the push's outcome, whether to
try again, whether the token is to be dropped, and why."""

from __future__ import annotations

from voip.push.interface import Environment, Outcome, PushRequest, PushType, TokenDrop, Verdict

RETRY_STATUSES = frozenset({429, 500, 503})

BAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
"""Reasons that say the token itself is bad, whatever the moment it was registered."""

RETIRE_CONNECTION_REASONS = frozenset({"Shutdown", "TooManyProviderTokenUpdates"})
"""Answers after which the connection that carried them should take no more pushes."""


def _other(environment: Environment) -> str:
    return "production" if environment == Environment.SANDBOX else "sandbox"


def likely_cause(request: PushRequest, status: int, reason: str | None) -> str | None:
    env = request.environment
    match reason:
        case "BadDeviceToken":
            return (
                f"the token is not a {env} token: a sandbox/production mismatch (the app "
                f"registered it with the {_other(env)} environment, e.g. a debug build "
                f"vs TestFlight/App Store), or it is malformed"
            )
        case "DeviceTokenNotForTopic" if request.push_type == PushType.VOIP:
            return (
                f"the token was not issued for {request.topic}: an ordinary APNs token "
                f"stored as a PushKit VoIP token, or a token of another app"
            )
        case "DeviceTokenNotForTopic":
            return (
                f"the token was not issued for {request.topic}: a PushKit VoIP token sent "
                f"to the plain topic (alert pushes need the app's ordinary APNs token)"
            )
        case "TopicDisallowed":
            return f"the auth key may not push to {request.topic}"
        case "BadTopic" | "MissingTopic":
            return "the bundle id (APNS_BUNDLE_ID) is wrong"
        case "Unregistered":
            return "the app was uninstalled or the token was replaced; drop it if it predates timestamp"
        case "ExpiredToken":
            return "the token expired; drop it if it predates timestamp"
        case "InvalidProviderToken":
            return (
                "APNS_KEY_ID / APNS_TEAM_ID do not match the .p8 key, the key was revoked, "
                "or the key is not enabled for APNs"
            )
        case "MissingProviderToken":
            return (
                "no provider token: APNs did not accept a client certificate for this "
                "topic and no auth key is configured"
            )
        case "ExpiredProviderToken":
            return "APNs calls even a fresh provider token expired: this server's clock is behind"
        case "Forbidden":
            return "the key or certificate is not allowed to send this push"
        case "PayloadTooLarge":
            return f"the payload is {len(request.payload)} bytes, over APNs's limit for {request.push_type}"
        case "BadCollapseId":
            return "apns-collapse-id (the call id) is over 64 bytes"
        case (
            "BadExpirationDate"
            | "BadPriority"
            | "InvalidPushType"
            | "BadMessageId"
            | "BadPayload"
            | "PayloadEmpty"
            | "DuplicateHeaders"
            | "BadPath"
            | "MethodNotAllowed"
        ):
            return "a bug in the push sender: it built a request APNs does not accept"
        case "TooManyRequests":
            return "too many pushes to this device token in a short time"
        case "TooManyProviderTokenUpdates":
            return "the provider token changed on a connection within 20 minutes"
        case "InternalServerError" | "ServiceUnavailable" | "Shutdown":
            return "APNs is having trouble; transient"
    if status in RETRY_STATUSES:
        return "APNs is having trouble; transient"
    return None


def judge(request: PushRequest, status: int, reason: str | None, timestamp: int | None = None) -> Verdict:
    """`timestamp`: a 410's, ms since the epoch, since when APNs knows the token is invalid."""
    if status == 200:
        return Verdict(Outcome.ACCEPTED)
    cause = likely_cause(request, status, reason)
    if status == 410:
        # Only a token registered before APNs's verdict is condemned: a phone that
        # registered the same token again afterwards keeps it.
        return Verdict(Outcome.TOKEN_INVALID, TokenDrop(registered_before=timestamp), likely_cause=cause)
    if status in RETRY_STATUSES:
        return Verdict(None, likely_cause=cause)
    drop = TokenDrop(registered_before=None) if reason in BAD_TOKEN_REASONS else None
    return Verdict(Outcome.REJECTED, drop, likely_cause=cause)
