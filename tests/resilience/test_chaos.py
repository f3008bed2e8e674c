"""The chaos run, short: 30 s of calls on three node processes and Sentinel-managed
Redis while nodes are killed and drained, Redis fails over and APNs misbehaves
(bench/chaos.py; the 3-minute run is `python -m bench --chaos`)."""

from __future__ import annotations

import asyncio

import pytest

from bench.chaos import Plan, Report, run

pytestmark = pytest.mark.interop


async def test_nothing_breaks_that_must_hold_in_30_seconds_of_chaos() -> None:
    plan = Plan(seconds=30, seed=9)
    # Bounded: 30 s of calls, a ring timeout and margin to settle, node and Redis starts.
    report: Report = await asyncio.wait_for(run(plan), timeout=240)
    summary = "\n".join(report.lines())
    print(summary)

    # The chaos happened: every kind of failure, and calls through all of it.
    actions = " ".join(report.actions)
    for kind in ("kill -9", "SIGTERM", "Redis failover", "APNs 429", "APNs 500", "APNs goaway", "APNs silence"):
        assert kind in actions, f"no {kind} in this run:\n{summary}"
    assert len(report.failovers) == 1 and report.calls_started >= 15, summary
    assert {"missed", "declined"} <= set(report.outcomes), summary
    assert report.pushes["call.incoming"] > 0 and report.status_checks > 0, summary

    # What must hold whatever happened: one assertion per invariant, so a failure names it.
    assert not report.ringing_late, summary
    assert not report.two_answers, summary
    assert not report.cancellation_not_once, summary
    assert not report.status_untrue, summary
    assert not report.calls_lost, summary
    assert not report.server_errors, summary
