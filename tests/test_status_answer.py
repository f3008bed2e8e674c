"""The status script's row and the endpoint's answer (voip/status.py), without Redis:
the row as the script returns it, the answer as the app reads it."""

from __future__ import annotations

import orjson

from voip.calls import CallState, EndReason, Party
from voip.status import StatusAnswer, StatusRow

CALL = "5f0c8c4e-5c1b-4d7e-9c89-3a1c2b7d9e10"


def reply(
    state: bytes, answered_by: bytes | None = None, ended_at: bytes | None = None, party: bytes = b"callee"
) -> list[bytes | None]:
    return [state, b"alice", b"bob", b"a1", answered_by, b"45000", ended_at, party]


def test_the_row_reads_every_field_of_the_reply() -> None:
    row = StatusRow.from_reply(reply(b"ended", b"b1", b"50000", b"caller"))
    assert row == StatusRow(CallState.ENDED, "alice", "bob", "a1", "b1", 45000, 50000, Party.CALLER)
    assert StatusRow.from_reply(reply(b"ringing")).answered_by_device is None


def test_a_ringing_call_past_its_deadline_reads_missed_and_ended_at_its_deadline() -> None:
    answer = StatusAnswer.of(CALL, StatusRow.from_reply(reply(b"ringing")), "b1", 45001)
    assert answer == StatusAnswer(CALL, CallState.MISSED, True, EndReason.UNANSWERED, 45001, None, 45000)
    assert orjson.dumps(answer.body()) == (
        b'{"call_id":"%s","state":"missed","end_call":true,"reason":"unanswered","server_time":45001,'
        b'"ended_at":45000}' % CALL.encode()
    )


def test_the_caller_naming_no_device_is_not_told_to_end_a_live_call() -> None:
    row = StatusRow.from_reply(reply(b"answered", b"b1", party=b"caller"))
    assert StatusAnswer.of(CALL, row, None, 1000).body() == {
        "call_id": CALL,
        "state": "answered",
        "end_call": False,
        "reason": None,
        "server_time": 1000,
        "answered_by_device": "b1",
    }


def test_an_unknown_call_has_no_state() -> None:
    assert orjson.dumps(StatusAnswer.unknown_call(CALL, 7).body()) == (
        b'{"call_id":"%s","end_call":true,"reason":"unknown_call","server_time":7}' % CALL.encode()
    )
