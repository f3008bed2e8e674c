"""Call history, pure: a call's history record (written by the call scripts with each
state, voip/lua/) as one user's history shows it, and which calls count as missed.

The record is the call's, the same for both parties; direction, peer and reason are the
asking user's. Keys and how the lists are kept: voip/stores/history.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from voip.calls import CALLER_REASON, FINAL_REASON, CallState

# Most entries a page holds, and the default.
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
# States of an incoming call that nobody answered: what a phone's Recents calls missed
# (the caller gave up while it rang, it rang out, or do-not-disturb / busy turned it away).
MISSED_STATES = frozenset({CallState.MISSED, CallState.CANCELLED})


# Call ids are canonical UUIDs (voip/protocol.py, the SIP gateway's uuid4s).
_CURSOR = re.compile(r"([0-9]{1,16}):([0-9a-f-]{36})")


class BadCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Cursor:
    """A place in a user's history, newest first: the last entry a page examined, by its
    start (ms) and call id. Calls made after it sort before it, so they never move it."""

    started_at: int
    call_id: str

    def encode(self) -> str:
        return f"{self.started_at}:{self.call_id}"

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        match = _CURSOR.fullmatch(raw)
        if match is None:
            raise BadCursor("cursor: not one this API returned")
        return cls(int(match[1]), match[2])


class Direction(StrEnum):
    OUTGOING = "outgoing"
    INCOMING = "incoming"


class Refusal(StrEnum):
    """Why the callee's availability turned a call away before anything rang: the
    `reason` of its history entries and of the caller's `call.declined`."""

    DND = "dnd"  # SIP 480 Temporarily Unavailable
    BUSY = "busy"  # SIP 486 Busy Here


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    call_id: str
    direction: Direction
    peer: str
    state: CallState
    reason: str | None
    started_at: int
    answered_at: int | None
    ended_at: int | None
    duration_ms: int | None
    answered_by_device: str | None

    @property
    def missed(self) -> bool:
        return self.direction is Direction.INCOMING and self.state in MISSED_STATES

    def body(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "direction": self.direction.value,
            "peer": self.peer,
            "state": self.state.value,
            "reason": self.reason,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "answered_by_device": self.answered_by_device,
        }


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def entry(call_id: str, record: dict[str, Any], user: str) -> HistoryEntry | None:
    """The call as `user` sees it; None when the record is not one of theirs (an index
    entry whose call never came to be, or whose id another pair of users took)."""
    if user == record.get("caller_user"):
        direction, peer = Direction.OUTGOING, str(record.get("callee_user", ""))
    elif user == record.get("callee_user"):
        direction, peer = Direction.INCOMING, str(record.get("caller_user", ""))
    else:
        return None
    state = CallState(record["state"])
    answered_at, ended_at = _int(record.get("answered_at")), _int(record.get("ended_at"))
    reason: str | None = None
    duration: int | None = None
    if state.is_final:
        reasons = CALLER_REASON if direction is Direction.OUTGOING else FINAL_REASON
        reason = record.get("refused") or reasons[state].value
        duration = ended_at - answered_at if answered_at is not None and ended_at is not None else 0
    return HistoryEntry(
        call_id=call_id,
        direction=direction,
        peer=peer,
        state=state,
        reason=reason,
        started_at=int(record["created_at"]),
        answered_at=answered_at,
        ended_at=ended_at,
        duration_ms=duration,
        answered_by_device=record.get("answered_by_device") or None,
    )
