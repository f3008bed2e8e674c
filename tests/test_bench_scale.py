"""`python -m bench --scale`, tiny (bench/scale.py): two node processes on one private Redis,
and on a local Redis Cluster (`--redis-cluster`), so that the bench does not rot; and the
figure it exists for, round trips per app-to-app call set-up, counted inside the nodes."""

from __future__ import annotations

import shutil

import pytest

from bench.redis_count import TIMELINE_BATCH
from bench.scale import Plan, run

pytestmark = pytest.mark.interop  # node processes, sipp


def test_scale_bench_runs_and_counts_redis_per_call(redis_url: str) -> None:
    assert shutil.which("sipp"), "sipp is installed by dev.py test"
    plan = Plan(seconds=0.5, warmup=0.2, callers=4, callees=4, calls=20, sip_rates=(10,), sip_seconds=1.0)
    report = run(plan, redis_url)
    print("\n".join(report.lines()))
    assert [run.nodes for run in report.app] == [1, 2]
    for app in report.app:
        assert app.calls > 0 and app.lost_incoming == 0
        assert set(app.cpu_ms) >= {"node 0", "load"}
    for count in report.counts:
        # Admission (with the callee's devices) and creation (which publishes call.incoming),
        # then the delivery traces of call.started and call.incoming, several calls' in one
        # batch per node: no SCRIPT EXISTS, no round trip per frame.
        assert count.round_trip_kinds["EVALSHA:admit_call+HGETALL+HGETALL"] == 1
        assert count.round_trip_kinds["EVALSHA:create_call+ZADD+ZADD+ZREMRANGEBYSCORE"] == 1
        assert "SCRIPT" not in count.round_trip_kinds
        traces = count.round_trip_kinds.get(TIMELINE_BATCH, 0) + count.round_trip_kinds.get("RPUSH+PUBLISH", 0)
        # Was 2, one per frame. Not "> 0": a batch can span the whole window, and the idle
        # window's count is subtracted.
        assert traces < 1, count
        assert count.round_trips <= 3, count
        assert count.commands > 10
        # A tick's 4 claims in one pipeline (when the idle window held a tick).
        assert count.claim_scripts == 0 or count.claim_round_trips_per_tick == 1, count
    assert [sip.sustained for sip in report.sip] == [10, 10], report.lines()


def test_scale_bench_runs_on_a_redis_cluster() -> None:
    plan = Plan(seconds=0.5, warmup=0.2, callers=4, callees=4, calls=20)
    report = run(plan, redis_cluster=True)
    print("\n".join(report.lines()))
    assert [run.nodes for run in report.app] == [1, 2]
    for app in report.app:
        assert app.calls > 0 and app.lost_incoming == 0
        assert set(app.cpu_ms) >= {"node 0", "load", "redis"}
    for count in report.counts:
        # On a cluster a script and the commands that went with it are two round trips, and
        # call.incoming is published after create_call, to the callee's shard.
        assert count.round_trip_kinds["EVALSHA:admit_call"] == 1
        assert count.round_trip_kinds["HGETALL+HGETALL"] == 1
        assert count.round_trip_kinds["EVALSHA:create_call"] == 1
        assert count.round_trip_kinds["SPUBLISH"] == 1
        assert "SCRIPT" not in count.round_trip_kinds
        assert count.commands > 10
        # A tick's 4 claims, each on its own.
        assert count.claim_scripts == 0 or 3 <= count.claim_round_trips_per_tick <= 4, count
    assert report.sip == []
