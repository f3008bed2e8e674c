"""Webhook events, pure: the event an outbox record becomes, and when a failing URL is
tried again. The record is what the call's script wrote in the same step as the change
(lua/transition.lua and others): the call as it was then, so an event delivered late still
says what happened at its time."""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any

from voip.calls import FINAL_REASON, CallState


class EventType(StrEnum):
    """Every event type, as docs/webhooks.md lists them."""

    CALL_CREATED = "call.created"
    CALL_RINGING = "call.ringing"
    CALL_ANSWERED = "call.answered"
    CALL_ENDED = "call.ended"
    CALL_MISSED = "call.missed"
    CALL_DECLINED = "call.declined"
    CALL_CANCELLED = "call.cancelled"
    CALL_FAILED = "call.failed"
    PUSH_FAILED = "push.failed"


# A failing URL is tried again after 1, 2, 4 ... seconds, at most an hour apart, and an
# event is given up on a day after its first failed attempt (voip_webhook_deliveries_total
# {outcome="dropped"}, and an error line).
FIRST_RETRY_MS = 1000
MAX_RETRY_MS = 3600 * 1000
GIVE_UP_MS = 24 * 3600 * 1000


def retry_delay_ms(failures: int, rng: random.Random | None = None) -> int:
    """After `failures` failed attempts in a row: doubling, capped, with jitter (75-100 %)
    so that many calls failing on one URL do not all come back in the same millisecond."""
    base = min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** min(max(failures - 1, 0), 32))
    return int(base * (0.75 + 0.25 * (rng or random).random()))


_FINAL = frozenset(state.value for state in CallState if state.is_final)


def _int(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def event_id(call_id: str, seq: int) -> str:
    """Stable across retries and nodes: a receiver drops an id it has seen."""
    return f"{call_id}.{seq}"


def event_body(call_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """The JSON a webhook POSTs for one outbox record."""
    call: dict[str, Any] = record.get("call") or {}
    state = str(call.get("state") or "")
    started_at = _int(call.get("created_at"))
    answered_at = _int(call.get("answered_at"))
    ended_at = _int(call.get("ended_at"))
    reason = record.get("reason")
    if reason is None and state in _FINAL:
        reason = FINAL_REASON[CallState(state)].value
    if answered_at is not None and ended_at is not None:
        duration_ms: int | None = max(0, ended_at - answered_at)
    elif ended_at is not None:
        duration_ms = 0  # ended without an answer
    else:
        duration_ms = None  # not over yet
    body: dict[str, Any] = {
        "id": event_id(call_id, int(record["seq"])),
        "type": record["type"],
        "created_at": _int(record.get("at")),
        "call": {
            "call_id": call_id,
            "caller": {
                "user": call.get("caller_user"),
                "device": call.get("caller_device"),
                "name": call.get("caller_name") or call.get("caller_user"),
            },
            "callee": call.get("callee_user"),
            "state": state,
            "reason": reason,
            "started_at": started_at,
            "answered_at": answered_at,
            "ended_at": ended_at,
            "duration_ms": duration_ms,
            "answered_by_device": call.get("answered_by_device") or None,
        },
    }
    if "push" in record:
        body["push"] = record["push"]
    return body
