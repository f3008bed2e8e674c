"""The call state machine (voip/calls.py), pure: every (action, party, state) against the
table the product promises, and the status verdict for every state and every asker."""

from __future__ import annotations

import itertools

import pytest

from voip.calls import (
    FINAL_REASON,
    NOTICES,
    TRANSITIONS,
    Action,
    CallState,
    EndReason,
    Party,
    Verdict,
    transitions_for,
    verdict,
)

S = CallState
# Written out independently of voip/calls.py: (action, party, from) -> to. Everything
# else is refused.
EXPECTED: dict[tuple[Action, Party, CallState], CallState] = {
    (Action.ANSWER, Party.CALLEE, S.RINGING): S.ANSWERED,
    (Action.DECLINE, Party.CALLEE, S.RINGING): S.DECLINED,
    (Action.HANGUP, Party.CALLEE, S.RINGING): S.DECLINED,
    (Action.HANGUP, Party.CALLEE, S.ANSWERED): S.ENDED,
    (Action.HANGUP, Party.CALLER, S.RINGING): S.CANCELLED,
    (Action.HANGUP, Party.CALLER, S.ANSWERED): S.ENDED,
    (Action.TIMEOUT, Party.SYSTEM, S.RINGING): S.MISSED,
    (Action.FAIL, Party.SYSTEM, S.RINGING): S.FAILED,
    (Action.FAIL, Party.SYSTEM, S.ANSWERED): S.ENDED,
}
FINAL = [s for s in CallState if s not in (S.RINGING, S.ANSWERED)]


@pytest.mark.parametrize(("action", "party", "state"), list(itertools.product(Action, Party, CallState)), ids=str)
def test_every_combination_against_the_table(action: Action, party: Party, state: CallState) -> None:
    moves = transitions_for(action, party)
    assert moves.get(state) == EXPECTED.get((action, party, state))


def test_the_table_has_nothing_more() -> None:
    listed = {(a, p, s): t for (a, p), moves in TRANSITIONS.items() for s, t in moves.items()}
    assert listed == EXPECTED
    assert transitions_for(Action.ANSWER, Party.CALLER) == {}  # unknown pairs: refused, not KeyError


def test_final_states_are_final() -> None:
    assert {s for s in CallState if s.is_final} == set(FINAL)
    for action, party in itertools.product(Action, Party):
        assert not set(transitions_for(action, party)) & set(FINAL), (action, party)
    # Every final state is reachable, and only the callee can answer.
    assert {t for t in EXPECTED.values() if t.is_final} == set(FINAL)
    assert [k for k, t in EXPECTED.items() if t is S.ANSWERED] == [(Action.ANSWER, Party.CALLEE, S.RINGING)]


NOW = 1_700_000_000_000
CALLER, ANSWERER, OTHER = "caller-dev", "answer-dev", "other-dev"
# Who asks: (party, device); a device None is a user asking without naming a device.
ASKERS = {
    "caller": (Party.CALLER, CALLER),
    "answering": (Party.CALLEE, ANSWERER),
    "other": (Party.CALLEE, OTHER),
    "caller_user": (Party.CALLER, None),
    "callee_user": (Party.CALLEE, None),
}


def expected_verdict(state: CallState, who: str, passed: bool) -> Verdict:
    if state is S.RINGING:
        return Verdict(S.MISSED, True, EndReason.UNANSWERED) if passed else Verdict(S.RINGING, False, None)
    if state is S.ANSWERED:
        if who == "other":
            return Verdict(S.ANSWERED, True, EndReason.ANSWERED_ELSEWHERE)
        # Live for every other asker: its own device holds the call, or it is a user
        # who named no device (never told to end a call that is live for them).
        return Verdict(S.ANSWERED, False, None)
    caller_side = ASKERS[who][0] is Party.CALLER
    if state is S.ENDED and who == "other":
        # Answered on another of the callee's devices, then hung up: answered elsewhere.
        return Verdict(state, True, EndReason.ANSWERED_ELSEWHERE)
    reason = {
        S.ENDED: EndReason.REMOTE_ENDED,
        S.CANCELLED: EndReason.REMOTE_ENDED,
        # The caller's phone was not declined "elsewhere": the other party ended it.
        S.DECLINED: EndReason.REMOTE_ENDED if caller_side else EndReason.DECLINED_ELSEWHERE,
        S.MISSED: EndReason.UNANSWERED,
        S.FAILED: EndReason.FAILED,
    }[state]
    return Verdict(state, True, reason)


@pytest.mark.parametrize(
    ("state", "who", "passed"),
    list(itertools.product(CallState, ASKERS, (False, True))),
    ids=lambda v: str(v),
)
def test_verdict_for_every_state_asker_and_deadline(state: CallState, who: str, passed: bool) -> None:
    answered_by = ANSWERER if state in (S.ANSWERED, S.ENDED) else None
    deadline = NOW - 1 if passed else NOW + 30_000
    party, device = ASKERS[who]
    got = verdict(
        state,
        party=party,
        device_id=device,
        answered_by_device=answered_by,
        ring_deadline_ms=deadline,
        now_ms=NOW,
    )
    assert got == expected_verdict(state, who, passed)


def test_the_deadline_itself_counts_as_passed() -> None:
    at = verdict(
        S.RINGING, party=Party.CALLEE, device_id=OTHER, answered_by_device=None, ring_deadline_ms=NOW, now_ms=NOW
    )
    before = verdict(
        S.RINGING, party=Party.CALLEE, device_id=OTHER, answered_by_device=None, ring_deadline_ms=NOW + 1, now_ms=NOW
    )
    assert (at.state, at.end_call) == (S.MISSED, True)
    assert (before.state, before.end_call) == (S.RINGING, False)


def test_a_callee_device_never_matches_a_missing_answering_device() -> None:
    got = verdict(
        S.ANSWERED, party=Party.CALLEE, device_id=OTHER, answered_by_device=None, ring_deadline_ms=NOW, now_ms=NOW
    )
    assert got == Verdict(S.ANSWERED, True, EndReason.ANSWERED_ELSEWHERE)


def test_a_callee_device_named_like_the_callers_is_still_the_callees() -> None:
    # Device ids are per user: bob's "iphone" is not alice's "iphone".
    got = verdict(
        S.ANSWERED, party=Party.CALLEE, device_id="iphone", answered_by_device="ipad", ring_deadline_ms=NOW, now_ms=NOW
    )
    assert got == Verdict(S.ANSWERED, True, EndReason.ANSWERED_ELSEWHERE)


# EndReason -> CXCallEndedReason. The wire values are distinct, and every CallKit
# reason an app needs has exactly one wire value, apart from unknown_call, which the
# app also shows as .failed.
CALLKIT = {
    EndReason.REMOTE_ENDED: "remoteEnded",
    EndReason.UNANSWERED: "unanswered",
    EndReason.ANSWERED_ELSEWHERE: "answeredElsewhere",
    EndReason.DECLINED_ELSEWHERE: "declinedElsewhere",
    EndReason.FAILED: "failed",
    EndReason.UNKNOWN_CALL: "failed",
}


def test_callkit_reason_mapping_is_one_to_one() -> None:
    assert set(CALLKIT) == set(EndReason)
    values = [r.value for r in EndReason]
    assert len(values) == len(set(values))
    without_unknown = {r: cx for r, cx in CALLKIT.items() if r is not EndReason.UNKNOWN_CALL}
    assert len(set(without_unknown.values())) == len(without_unknown)  # injective
    assert set(without_unknown.values()) == {
        "remoteEnded",
        "unanswered",
        "answeredElsewhere",
        "declinedElsewhere",
        "failed",
    }  # onto
    # Each final state has exactly one reason, and every reason but unknown_call is used
    # by a final state or by the verdict.
    assert set(FINAL_REASON) == set(FINAL)
    used = set(FINAL_REASON.values()) | {EndReason.ANSWERED_ELSEWHERE}
    assert used == set(EndReason) - {EndReason.UNKNOWN_CALL}


def test_every_state_after_ringing_has_a_notice_for_each_party() -> None:
    assert set(NOTICES) == set(CallState) - {S.RINGING}
    for to_caller, to_callee in NOTICES.values():
        assert to_caller.startswith("call.") and to_callee.startswith("call.")
    assert NOTICES[S.ANSWERED] == ("call.answered", "call.answered_elsewhere")
