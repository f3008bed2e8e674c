"""The call state machine, pure: states, who may move a call where, and the status verdict.

Redis applies these transitions atomically (see voip/stores/calls.py); this module decides what a
transition *is*, so the rules live in one place and are tested without Redis.

    ringing ──answer──▶ answered ──hangup──▶ ended
       │
       ├─hangup (caller)──▶ cancelled
       ├─decline / hangup (callee)──▶ declined
       ├─timeout, no reachable device──▶ missed
       └─fail──▶ failed
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from voip.protocol import FrameType


class CallState(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"
    CANCELLED = "cancelled"
    DECLINED = "declined"
    MISSED = "missed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self not in (CallState.RINGING, CallState.ANSWERED)


class Party(StrEnum):
    CALLER = "caller"
    CALLEE = "callee"
    SYSTEM = "system"  # the ring timeout, a failed leg: no device acted


class Action(StrEnum):
    ANSWER = "answer"
    DECLINE = "decline"
    HANGUP = "hangup"
    TIMEOUT = "timeout"
    FAIL = "fail"


# (action, party) -> {state it may leave: state it enters}. Anything not here is refused.
TRANSITIONS: dict[tuple[Action, Party], dict[CallState, CallState]] = {
    (Action.ANSWER, Party.CALLEE): {CallState.RINGING: CallState.ANSWERED},
    (Action.DECLINE, Party.CALLEE): {CallState.RINGING: CallState.DECLINED},
    (Action.HANGUP, Party.CALLEE): {
        CallState.RINGING: CallState.DECLINED,
        CallState.ANSWERED: CallState.ENDED,
    },
    (Action.HANGUP, Party.CALLER): {
        CallState.RINGING: CallState.CANCELLED,
        CallState.ANSWERED: CallState.ENDED,
    },
    (Action.TIMEOUT, Party.SYSTEM): {CallState.RINGING: CallState.MISSED},
    (Action.FAIL, Party.SYSTEM): {
        CallState.RINGING: CallState.FAILED,
        CallState.ANSWERED: CallState.ENDED,
    },
}


def transitions_for(action: Action, party: Party) -> dict[CallState, CallState]:
    return TRANSITIONS.get((action, party), {})


class EndReason(StrEnum):
    """Why an app should end its CallKit call; one-to-one with CXCallEndedReason."""

    REMOTE_ENDED = "remote_ended"  # CXCallEndedReason.remoteEnded
    UNANSWERED = "unanswered"  # .unanswered
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # .answeredElsewhere
    DECLINED_ELSEWHERE = "declined_elsewhere"  # .declinedElsewhere
    FAILED = "failed"  # .failed
    UNKNOWN_CALL = "unknown_call"  # .failed: unknown, or past retention


FINAL_REASON: dict[CallState, EndReason] = {
    CallState.ENDED: EndReason.REMOTE_ENDED,
    CallState.CANCELLED: EndReason.REMOTE_ENDED,
    CallState.DECLINED: EndReason.DECLINED_ELSEWHERE,
    CallState.MISSED: EndReason.UNANSWERED,
    CallState.FAILED: EndReason.FAILED,
}


# The caller's side of the same outcomes: "declined elsewhere" means nothing to the
# phone that placed the call; for it the other party ended the call.
CALLER_REASON: dict[CallState, EndReason] = {
    **FINAL_REASON,
    CallState.DECLINED: EndReason.REMOTE_ENDED,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    state: CallState
    end_call: bool
    reason: EndReason | None


def verdict(
    state: CallState,
    *,
    party: Party,
    device_id: str | None,
    answered_by_device: str | None,
    ring_deadline_ms: int,
    now_ms: int,
) -> Verdict:
    """What a device of `party` that was just woken should do with its CallKit call.

    `device_id` is one of the party's devices in the call (the caller's is the one that
    placed it), or None for a user who asked without naming a device: then the answer
    is the user's, and a call that is live for them is never to be ended.
    """
    if state is CallState.RINGING:
        if now_ms >= ring_deadline_ms:
            # The timeout is due but no node has fired it yet: never let a device ring past it.
            return Verdict(CallState.MISSED, True, EndReason.UNANSWERED)
        return Verdict(state, False, None)
    if state is CallState.ANSWERED:
        if device_id is None or party is Party.CALLER or device_id == answered_by_device:
            return Verdict(state, False, None)
        return Verdict(state, True, EndReason.ANSWERED_ELSEWHERE)
    if (
        state is CallState.ENDED
        and party is Party.CALLEE
        and device_id is not None
        and answered_by_device is not None
        and device_id != answered_by_device
    ):
        # Answered on another device, then hung up: for this device the call was answered
        # elsewhere (bench --ghosts found a late invite ended as remote_ended here).
        return Verdict(state, True, EndReason.ANSWERED_ELSEWHERE)
    reasons = CALLER_REASON if party is Party.CALLER else FINAL_REASON
    return Verdict(state, True, reasons[state])


# What each party's devices are told when a call enters a state.
# (frame type for the caller, frame type for callee devices that did not act)
NOTICES: dict[CallState, tuple[FrameType, FrameType]] = {
    CallState.ANSWERED: (FrameType.CALL_ANSWERED, FrameType.CALL_ANSWERED_ELSEWHERE),
    CallState.DECLINED: (FrameType.CALL_DECLINED, FrameType.CALL_DECLINED),
    CallState.CANCELLED: (FrameType.CALL_CANCELLED, FrameType.CALL_CANCELLED),
    CallState.MISSED: (FrameType.CALL_MISSED, FrameType.CALL_MISSED),
    CallState.FAILED: (FrameType.CALL_FAILED, FrameType.CALL_FAILED),
    CallState.ENDED: (FrameType.CALL_ENDED, FrameType.CALL_ENDED),
}
