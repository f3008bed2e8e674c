"""Operators' HTTP API: calls (listed and one by one, with the whole timeline), a user's
devices, and the counters behind the page. Every route wants the operator role."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from voip.api import ApiError, JSONResponse, authenticate, node_of
from voip.calls import CallState, Party, verdict
from voip.node import Node
from voip.ops.access import OPERATOR
from voip.ops.index import BadCursor, CallFilter, CallIndex, Position, call_view
from voip.ops.summary import summarize
from voip.settings import webhook_url_list

MAX_LIMIT = 200
MAX_TIME = 2**53 - 1
SUMMARY_WINDOW_MS = 3_600_000
SUMMARY_CALLS = 500
MAX_USER = 128


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {message}", detail=[{"field": field, "message": message}])


def _int_param(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or not low <= int(raw) <= high:
        raise _invalid(name, f"an integer from {low} to {high}")
    return int(raw)


def _user(value: str, field: str) -> str:
    if not 1 <= len(value) <= MAX_USER:
        raise _invalid(field, f"1 to {MAX_USER} characters")
    return value


def _window(request: Request) -> tuple[int | None, int | None]:
    since = _int_param(request, "since", 0, MAX_TIME)
    until = _int_param(request, "until", 0, MAX_TIME)
    if since is not None and until is not None and since > until:
        raise _invalid("since", "after until")
    return since, until


def _index(node: Node) -> CallIndex:
    return CallIndex(node.stores.ops)


async def list_calls(request: Request) -> Response:
    authenticate(request, OPERATOR)
    params = request.query_params
    states = set()
    for value in params.getlist("state"):
        try:
            states.add(CallState(value))
        except ValueError:
            raise _invalid("state", f"one of {', '.join(s.value for s in CallState)}") from None
    user = _user(params["user"], "user") if "user" in params else ""
    since, until = _window(request)
    limit = _int_param(request, "limit", 1, MAX_LIMIT) or 50
    after = None
    if "cursor" in params:
        try:
            after = Position.decode(params["cursor"])
        except BadCursor as exc:
            raise _invalid("cursor", str(exc)) from None
    where = CallFilter(states=frozenset(states), user=user, since=since, until=until)
    calls, position = await _index(node_of(request)).page(where, limit=limit, after=after)
    return JSONResponse({"calls": calls, "next_cursor": position.encode() if position else None})


async def get_call(request: Request) -> Response:
    authenticate(request, OPERATOR)
    raw_id = request.path_params["call_id"]
    try:
        call_id = str(uuid.UUID(raw_id))
    except ValueError:
        raise _invalid("call_id", "a UUID") from None
    fields, entries = await node_of(request).stores.ops.call_with_timeline(call_id)
    if not fields:
        raise ApiError(404, "unknown_call", "no such call (or past its retention)")
    call = call_view(call_id, fields)
    timeline = [_with_verdict(call, readable_push(e)) for e in entries]
    return JSONResponse({"call": call, "timeline": timeline})


# An APNs 200 was recorded as "delivered" before it was named for what it is: APNs took
# the push, which a sleeping phone may get hours later or never.
LEGACY_OUTCOMES = {"delivered": "accepted"}


def readable_push(entry: dict[str, Any]) -> dict[str, Any]:
    """A push entry (or last push) as written today, whenever it was written."""
    outcome = entry.get("outcome")
    if isinstance(outcome, str) and outcome in LEGACY_OUTCOMES:
        return {**entry, "outcome": LEGACY_OUTCOMES[outcome]}
    return entry


def _with_verdict(call: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A status check, with the verdict the device was given: recomputed by the same
    pure function the endpoint used, from the state the check saw."""
    if entry.get("event") != "status_check" or entry.get("state") not in CallState._value2member_map_:
        return entry
    # Checks recorded before the entry named the party: only the caller's device was the caller.
    party = entry.get("party") or (
        "caller" if entry.get("device") == call["caller_device"] and entry.get("via") == "bearer" else "callee"
    )
    given = verdict(
        CallState(entry["state"]),
        party=Party.CALLER if party == "caller" else Party.CALLEE,
        device_id=entry.get("device"),
        answered_by_device=call["answered_by_device"],
        ring_deadline_ms=call["ring_deadline"] or 0,
        now_ms=entry.get("at", 0),
    )
    return {**entry, "end_call": given.end_call, "reason": given.reason.value if given.reason else None}


def _device_view(
    device_id: str, record: dict[str, Any], presence: bytes | None, last_push: bytes | None, now: int
) -> dict[str, Any]:
    token = record.get("voip_token")
    fcm_token = record.get("fcm_token")
    since = record.get("token_registered_at")
    node, _, expires = presence.decode().rpartition("|") if presence else ("", "", "0")
    online = bool(presence) and expires.isascii() and expires.isdigit() and int(expires) > now
    return {
        "device_id": device_id,
        "platform": record.get("platform", "ios"),
        "apns_environment": record.get("apns_environment"),
        "bundle_id": record.get("bundle_id"),
        # Enough to tell tokens apart in a support case; the token itself stays private.
        "voip_token_prefix": token[:8] if token else None,
        "has_alert_token": bool(record.get("alert_token")),
        "fcm_token_prefix": fcm_token[:8] if fcm_token else None,
        "registered_at": record.get("registered_at"),
        "updated_at": record.get("updated_at"),
        "token_registered_at": since,
        "token_age_ms": now - since if (token or fcm_token) and isinstance(since, int) else None,
        "online": online,
        "connected_node": node if online else None,
        "last_push": readable_push(orjson.loads(last_push)) if last_push else None,
    }


async def user_devices(request: Request) -> Response:
    authenticate(request, OPERATOR)
    user = _user(request.path_params["user"], "user")
    devices, presence, pushes = await node_of(request).stores.ops.user_devices(user)
    now = int(time.time() * 1000)
    views = [
        _device_view(k.decode(), orjson.loads(v), presence.get(k), pushes.get(k), now)
        for k, v in sorted(devices.items())
    ]
    return JSONResponse({"user": user, "devices": views})


async def summary(request: Request) -> Response:
    authenticate(request, OPERATOR)
    since, until = _window(request)
    now = int(time.time() * 1000)
    until = until if until is not None else now
    since = since if since is not None else max(0, until - SUMMARY_WINDOW_MS)
    if since > until:
        raise _invalid("since", "after until")
    node = node_of(request)
    calls, more = await _index(node).page(CallFilter(since=since, until=until), limit=SUMMARY_CALLS)
    timelines = await node.stores.ops.timelines([call["call_id"] for call in calls])
    return JSONResponse(
        {
            "since": since,
            "until": until,
            "truncated": more is not None,
            **summarize(calls, timelines),
            "redis": node.epoch.summary(),
            "webhooks": await _webhooks(node, now),
        }
    )


async def _webhooks(node: Node, now: int) -> dict[str, Any]:
    """Failing webhook URLs (what any node last saw) and the outbox's backlog."""
    outbox = node.stores.webhooks
    failures = await outbox.failures()
    filed, due = await outbox.backlog(now)
    return {
        "urls": len(webhook_url_list(node.settings.webhook_urls)),
        "failing": sorted(failures.values(), key=lambda f: f.get("failing_since", 0)),
        "calls_filed": filed,
        "calls_due": due,
    }
