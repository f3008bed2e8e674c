"""The pushes a call sends: VoIP invite, VoIP cancellation, VoIP hang-up, missed-call alert.

Builders return a ready `PushRequest` (body already serialised, so its size is
known and nothing is encoded on the send path). `check()` holds the limits APNs
enforces, so an oversized push is refused here instead of costing a round trip.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import orjson

from voip.push.interface import Caller, Environment, PushRequest, PushType

PAYLOAD_LIMITS: dict[PushType, int] = {PushType.VOIP: 5120, PushType.ALERT: 4096}
COLLAPSE_ID_LIMIT = 64

INCOMING = "call.incoming"
CANCELLED = "call.cancelled"
ENDED = "call.ended"
MISSED = "call.missed"

MISSED_CALL_ALERT_LIFETIME = 24 * 3600
"""How long APNs keeps a missed-call alert for a device that is offline."""


def voip_topic(bundle_id: str) -> str:
    return f"{bundle_id}.voip"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _body(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


def _voip_push(
    bundle_id: str,
    device_token: str,
    environment: Environment | str,
    call_id: str,
    payload: dict[str, Any],
    deadline: float,
    apns_id: str | None,
) -> PushRequest:
    """A PushKit push about one call: the call id is the collapse id, so a newer push for
    the call replaces an older one that APNs still holds."""
    return PushRequest(
        device_token=device_token,
        environment=Environment(environment),
        push_type=PushType.VOIP,
        topic=voip_topic(bundle_id),
        payload=_body(payload),
        apns_id=apns_id or str(uuid.uuid4()),
        deadline=deadline,
        priority=10,
        # Rounded up: APNs must not drop a push a fraction of a second before its deadline.
        expiration=math.ceil(deadline),
        collapse_id=call_id,
    )


def voip_invite(
    *,
    bundle_id: str,
    device_token: str,
    environment: Environment | str,
    call_id: str,
    caller: Caller,
    ring_deadline: float,
    status_url: str,
    custom: dict[str, Any] | None = None,
    now: float | None = None,
    apns_id: str | None = None,
) -> PushRequest:
    """PushKit invite: rings the phone. Expires, and stops being retried, at `ring_deadline`
    (UNIX seconds); a phone that rings after the caller gave up is a ghost call."""
    now = time.time() if now is None else now
    payload = {
        "type": INCOMING,
        "call_id": call_id,
        "caller": {"id": caller.id, "display_name": caller.display_name},
        "sent_at": _ms(now),
        "expires_at": _ms(ring_deadline),
        "status_url": status_url,
    }
    if custom is not None:
        payload["custom"] = custom
    return _voip_push(bundle_id, device_token, environment, call_id, payload, ring_deadline, apns_id)


def call_cancellation(
    *,
    bundle_id: str,
    device_token: str,
    environment: Environment | str,
    call_id: str,
    reason: str,
    ring_deadline: float,
    now: float | None = None,
    apns_id: str | None = None,
) -> PushRequest:
    """PushKit cancellation of a ringing call. It shares the invite's collapse id and
    expiration: to a device that is offline, APNs keeps one push per token, so the
    cancellation replaces the stored invite instead of following it."""
    now = time.time() if now is None else now
    payload = {"type": CANCELLED, "call_id": call_id, "reason": reason, "sent_at": _ms(now)}
    return _voip_push(bundle_id, device_token, environment, call_id, payload, ring_deadline, apns_id)


def call_ended(
    *,
    bundle_id: str,
    device_token: str,
    environment: Environment | str,
    call_id: str,
    reason: str,
    deadline: float,
    now: float | None = None,
    apns_id: str | None = None,
) -> PushRequest:
    """PushKit hang-up of an answered call, for a device in the call whose WebSocket is
    gone: the cancellation's shape, `type: "call.ended"`, so an app that handles one
    handles both. Retried, and kept by APNs, until `deadline`."""
    now = time.time() if now is None else now
    payload = {"type": ENDED, "call_id": call_id, "reason": reason, "sent_at": _ms(now)}
    return _voip_push(bundle_id, device_token, environment, call_id, payload, deadline, apns_id)


def missed_call_alert(
    *,
    bundle_id: str,
    device_token: str,
    environment: Environment | str,
    call_id: str,
    caller: Caller,
    deadline: float,
    now: float | None = None,
    apns_id: str | None = None,
    lifetime: int = MISSED_CALL_ALERT_LIFETIME,
) -> PushRequest:
    """A visible notification after an unanswered call; `device_token` is the app's
    ordinary APNs token, not the VoIP one. Retried until `deadline`; kept by APNs for
    an offline device for `lifetime` seconds."""
    now = time.time() if now is None else now
    payload = {
        "aps": {"alert": f"Missed call from {caller.display_name}", "sound": "default"},
        "type": MISSED,
        "call_id": call_id,
        "caller": {"id": caller.id, "display_name": caller.display_name},
        "sent_at": _ms(now),
    }
    return PushRequest(
        device_token=device_token,
        environment=Environment(environment),
        push_type=PushType.ALERT,
        topic=bundle_id,
        payload=_body(payload),
        apns_id=apns_id or str(uuid.uuid4()),
        deadline=deadline,
        priority=10,
        expiration=int(now) + lifetime,
        collapse_id=call_id,
    )


def check(request: PushRequest) -> tuple[str, str] | None:
    """(reason, likely cause) if APNs would refuse the request for its shape, else None."""
    limit = PAYLOAD_LIMITS[request.push_type]
    if len(request.payload) > limit:
        return (
            "PayloadTooLarge",
            f"the {request.push_type} payload is {len(request.payload)} bytes; APNs accepts at most {limit}",
        )
    if request.collapse_id is not None and len(request.collapse_id.encode()) > COLLAPSE_ID_LIMIT:
        return "BadCollapseId", f"apns-collapse-id is over {COLLAPSE_ID_LIMIT} bytes"
    return None
