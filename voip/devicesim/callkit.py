"""CallKit as the app sees it: the calls it reported, and how each one ended.

`CXCallEndedReason` names are Apple's; `END_REASONS` maps the server's status reasons
(voip.calls.EndReason) onto them one to one, as docs/protocol.md tabulates."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from voip.calls import EndReason


class CXCallEndedReason(StrEnum):
    FAILED = "failed"
    REMOTE_ENDED = "remoteEnded"
    UNANSWERED = "unanswered"
    ANSWERED_ELSEWHERE = "answeredElsewhere"
    DECLINED_ELSEWHERE = "declinedElsewhere"


END_REASONS: dict[EndReason, CXCallEndedReason] = {
    EndReason.REMOTE_ENDED: CXCallEndedReason.REMOTE_ENDED,
    EndReason.UNANSWERED: CXCallEndedReason.UNANSWERED,
    EndReason.ANSWERED_ELSEWHERE: CXCallEndedReason.ANSWERED_ELSEWHERE,
    EndReason.DECLINED_ELSEWHERE: CXCallEndedReason.DECLINED_ELSEWHERE,
    EndReason.FAILED: CXCallEndedReason.FAILED,
    EndReason.UNKNOWN_CALL: CXCallEndedReason.FAILED,
}


def cx_reason(reason: str | None) -> CXCallEndedReason:
    """A reason the server sent, as CallKit's; anything unknown ends the call as failed."""
    try:
        return END_REASONS[EndReason(reason or "")]
    except ValueError:
        return CXCallEndedReason.FAILED


CallPhase = Literal["ringing", "dialling", "connected", "ended"]


@dataclass(slots=True)
class ReportedCall:
    call_id: str
    direction: Literal["incoming", "outgoing"]
    peer: str
    phase: CallPhase
    reported_at: float
    ended_at: float | None = None
    ended_reason: CXCallEndedReason | None = None
    """Set when the app reported the end (`reportCall(with:endedAt:reason:)`)."""
    ended_by_user: bool = False
    """Ended through a `CXEndCallAction`: the user hung up or declined."""

    @property
    def active(self) -> bool:
        return self.phase != "ended"
