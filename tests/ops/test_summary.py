"""The page's counters, from timelines: push results, push-to-status delays, late pushes."""

from __future__ import annotations

from typing import Any

from voip.ops.summary import push_to_status_delays, summarize


def push(at: int, device: str | None = "d1", status: int = 200, reason: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"at": at, "event": "push", "status": status, "apns_id": "x", "latency_ms": 30}
    if device:
        entry["device"] = device
    if reason:
        entry["reason"] = reason
    return entry


def check(at: int, state: str, device: str = "d1", via: str = "capability") -> dict[str, Any]:
    return {"at": at, "event": "status_check", "state": state, "device": device, "via": via, "node": "n"}


def test_delay_pairs_each_push_with_the_next_check_of_its_device() -> None:
    timeline = [
        {"at": 0, "event": "created"},
        push(100, "d1"),
        push(150, "d2"),
        check(400, "ringing", "d2"),
        check(900, "ringing", "d1"),
        check(950, "ringing", "d1"),  # a second check answers no push
        push(1000, None),  # an entry without a device pairs with any device's check
        check(1600, "answered", "d3"),
        push(2000, "d4", status=400, reason="BadDeviceToken"),  # refused: nothing to wait for
        check(2100, "answered", "d4"),
        {**push(3000, "d5"), "push_type": "alert", "kind": "missed_alert"},  # wakes no app
        check(3100, "answered", "d5"),
    ]
    assert push_to_status_delays(timeline) == [250, 800, 600]


def test_summary_of_outcomes_push_reasons_delays_and_late_pushes() -> None:
    calls = [{"state": "ended"}, {"state": "missed"}, {"state": "ended"}, {"state": "ringing"}]
    timelines = [
        [push(0), check(300, "answered"), check(90_000, "ended")],  # a late push, caught
        [push(0, status=410, reason="Unregistered"), push(5, "d2"), check(40_000, "missed", "d2")],
        [{"at": 0, "event": "created"}, {"at": 1, "event": "something_new", "x": 1}],
        [],
    ]
    summary = summarize(calls, timelines)
    assert summary["calls"] == 4
    assert summary["outcomes"] == {"ended": 2, "missed": 1, "ringing": 1}
    assert summary["push_results"] == {"Unregistered": 1, "accepted": 2}
    delays = summary["push_to_status_ms"]
    assert (delays["count"], delays["p50"], delays["max"]) == (2, 39_995, 39_995)
    assert [b["count"] for b in delays["buckets"]] == [0, 1, 0, 0, 0, 0, 0, 1]
    assert delays["buckets"][0]["label"] == "< 250 ms" and delays["buckets"][-1]["label"] == "≥ 30 s"
    assert summary["late_pushes_caught"] == {"status_checks": 2, "calls": 2}


def test_an_empty_window() -> None:
    summary = summarize([], [])
    assert summary["push_to_status_ms"]["p50"] is None and summary["outcomes"] == {}


def test_only_checks_that_answer_a_push_are_late_pushes_caught() -> None:
    """Two manual bearer checks after the call ended are not late pushes: nothing pushed
    them. A capability check is, and so is a bearer check naming the push it answers."""
    timeline = [
        push(0),
        check(90_000, "ended", via="bearer"),
        check(91_000, "ended", via="bearer"),
        check(92_000, "ringing"),
    ]
    assert summarize([{"state": "ended"}], [timeline])["late_pushes_caught"] == {"status_checks": 0, "calls": 0}
    timeline += [check(93_000, "ended"), {**check(94_000, "ended", via="bearer"), "push_id": "x"}]
    assert summarize([{"state": "ended"}], [timeline])["late_pushes_caught"] == {"status_checks": 2, "calls": 1}
