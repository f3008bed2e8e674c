"""The call-status endpoint's two shapes: the row voip/lua/status_check.lua returns for
one asker, and the answer `GET /v1/calls/{call_id}/status` sends (docs/protocol.md §2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voip.calls import CallState, EndReason, Party, verdict


@dataclass(frozen=True, slots=True)
class StatusRow:
    state: CallState
    caller_user: str
    callee_user: str
    caller_device: str
    answered_by_device: str | None
    ring_deadline: int  # ms
    ended_at: int | None  # ms
    party: Party  # the asker's

    @classmethod
    def from_reply(cls, fields: Sequence[bytes | None]) -> StatusRow:
        state, caller_user, callee_user, caller_device, answered_by, ring_deadline, ended_at, party = fields
        assert state is not None and caller_user is not None and callee_user is not None
        assert caller_device is not None and ring_deadline is not None
        return cls(
            state=CallState(state.decode()),
            caller_user=caller_user.decode(),
            callee_user=callee_user.decode(),
            caller_device=caller_device.decode(),
            answered_by_device=answered_by.decode() if answered_by else None,
            ring_deadline=int(ring_deadline),
            ended_at=int(ended_at) if ended_at else None,
            party=Party.CALLER if party == b"caller" else Party.CALLEE,
        )


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    call_id: str
    state: CallState | None  # None: the call is unknown to the asker (404)
    end_call: bool
    reason: EndReason | None
    server_time: int  # ms
    answered_by_device: str | None = None
    ended_at: int | None = None

    @classmethod
    def unknown_call(cls, call_id: str, now: int) -> StatusAnswer:
        return cls(call_id, None, True, EndReason.UNKNOWN_CALL, now)

    @classmethod
    def of(cls, call_id: str, row: StatusRow, device_id: str | None, now: int) -> StatusAnswer:
        """The verdict for `device_id` (None: the asking user as a whole)."""
        result = verdict(
            row.state,
            party=row.party,
            device_id=device_id,
            answered_by_device=row.answered_by_device,
            ring_deadline_ms=row.ring_deadline,
            now_ms=now,
        )
        ended_at = row.ended_at
        if ended_at is None and result.state is CallState.MISSED:
            ended_at = row.ring_deadline  # past its deadline, though no node has fired it yet
        return cls(call_id, result.state, result.end_call, result.reason, now, row.answered_by_device, ended_at)

    def body(self) -> dict[str, Any]:
        """The JSON object, keys in the documented order; optional ones only when set."""
        body: dict[str, Any] = {"call_id": self.call_id}
        if self.state is not None:
            body["state"] = self.state.value
        body["end_call"] = self.end_call
        body["reason"] = self.reason.value if self.reason else None
        body["server_time"] = self.server_time
        if self.answered_by_device:
            body["answered_by_device"] = self.answered_by_device
        if self.ended_at is not None:
            body["ended_at"] = self.ended_at
        return body
