"""voip/history.py, pure: a call's history record as each party sees it, and cursors."""

from __future__ import annotations

import uuid

import pytest

from voip.history import BadCursor, Cursor, Direction, entry

CALL = str(uuid.uuid4())


def record(state: str, **fields: str) -> dict[str, str]:
    return {"state": state, "caller_user": "alice", "callee_user": "bob", "created_at": "1000", **fields}


def test_each_party_reads_the_call_in_its_own_words() -> None:
    declined = record("declined", ended_at="1500")
    mine, theirs = entry(CALL, declined, "alice"), entry(CALL, declined, "bob")
    assert mine is not None and theirs is not None
    assert (mine.direction, mine.peer, mine.reason) == (Direction.OUTGOING, "bob", "remote_ended")
    assert (theirs.direction, theirs.peer, theirs.reason) == (Direction.INCOMING, "alice", "declined_elsewhere")
    assert mine.duration_ms == theirs.duration_ms == 0
    assert entry(CALL, declined, "carol") is None  # an id another pair of users took


@pytest.mark.parametrize(
    ("state", "fields", "missed", "reason", "duration"),
    [
        ("ringing", {}, False, None, None),
        ("answered", {"answered_at": "1200", "answered_by_device": "b1"}, False, None, None),
        ("ended", {"answered_at": "1200", "ended_at": "4200"}, False, "remote_ended", 3000),
        ("cancelled", {"ended_at": "1300"}, True, "remote_ended", 0),
        ("missed", {"ended_at": "46000"}, True, "unanswered", 0),
        ("missed", {"ended_at": "1001", "refused": "dnd"}, True, "dnd", 0),
        ("missed", {"ended_at": "1001", "refused": "busy"}, True, "busy", 0),
        ("failed", {"ended_at": "1100"}, False, "failed", 0),
        ("declined", {"ended_at": "1100"}, False, "declined_elsewhere", 0),
    ],
)
def test_what_counts_as_missed_and_the_reason_and_duration(
    state: str, fields: dict[str, str], missed: bool, reason: str | None, duration: int | None
) -> None:
    seen = entry(CALL, record(state, **fields), "bob")
    assert seen is not None
    assert (seen.missed, seen.reason, seen.duration_ms) == (missed, reason, duration)
    # The caller never has a missed call of their own.
    placed = entry(CALL, record(state, **fields), "alice")
    assert placed is not None and placed.missed is False
    assert placed.body()["state"] == state and placed.body()["started_at"] == 1000


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    cursor = Cursor(1767225600000, CALL)
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "1:", f":{CALL}", f"x:{CALL}", f"{'1' * 17}:{CALL}", f"1:{CALL.upper()}", f"1:{CALL}\n", "1:2:3"):
        with pytest.raises(BadCursor):
            Cursor.decode(bad)
