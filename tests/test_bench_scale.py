"""`python -m bench --scale`, tiny (bench/scale.py): two node processes on one private Redis,
and on a local Redis Cluster (`--redis-cluster`), so that the bench does not rot; and the
figures it exists for, Redis round trips per app-to-app call set-up counted inside the
nodes: writes, and waits (replies waited for one after another)."""

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
        # Admission (with the caller's history entry and the callee's devices) and creation
        # (which publishes call.incoming), then the delivery traces of call.started and
        # call.incoming, several calls' in one batch per node: no SCRIPT EXISTS, no round
        # trip per frame.
        assert count.round_trip_kinds["EVALSHA:admit_call+ZADD+ZREMRANGEBYSCORE+PEXPIRE+HGETALL+HGETALL"] == 1
        assert count.round_trip_kinds["EVALSHA:create_call+ZADD+ZADD+ZREMRANGEBYSCORE"] == 1
        assert "SCRIPT" not in count.round_trip_kinds
        traces = count.round_trip_kinds.get(TIMELINE_BATCH, 0) + count.round_trip_kinds.get("RPUSH+PUBLISH", 0)
        # Was 2, one per frame. Not "> 0": a batch can span the whole window, and the idle
        # window's count is subtracted.
        assert traces < 1, count
        assert count.round_trips <= 3, count
        # A set-up waits on the two; on one Redis every write is a wait of its own.
        assert count.set_up_waits == 2, count
        assert count.waits == pytest.approx(count.round_trips), count
        assert count.commands > 10
        # A tick's 4 claims in one pipeline (when the idle window held a tick).
        assert count.claim_scripts == 0 or count.claim_round_trips_per_tick == 1, count
        assert count.claim_ticks == 0 or count.claim_waits_per_tick == 1, count
    assert [sip.sustained for sip in report.sip] == [10, 10], report.lines()


def test_scale_bench_runs_on_a_redis_cluster() -> None:
    plan = Plan(seconds=0.5, warmup=0.2, callers=4, callees=4, calls=20, sip_rates=(10,), sip_seconds=1.0)
    report = run(plan, redis_cluster=True)
    print("\n".join(report.lines()))
    assert [run.nodes for run in report.app] == [1, 2]
    for app in report.app:
        assert app.calls > 0 and app.lost_incoming == 0
        assert set(app.cpu_ms) >= {"node 0", "load", "redis"}
    for count in report.counts:
        # Admission with the callee's devices, one write to the callee's shard, and the
        # caller's history entry at once (to the caller's shard, or with the rest on the
        # callee's); creation; then at once, a write per shard, call.incoming to the
        # callee's and the indexes (SPUBLISH only with the ones that share its shard):
        # three waits.
        admit = sum(n for kind, n in count.round_trip_kinds.items() if kind.startswith("EVALSHA:admit_call"))
        assert admit == pytest.approx(1), count
        assert count.round_trip_kinds["EVALSHA:create_call"] == 1
        spublish = sum(n for kind, n in count.round_trip_kinds.items() if kind.startswith("SPUBLISH"))
        assert spublish == pytest.approx(1), count
        assert "SCRIPT" not in count.round_trip_kinds
        assert count.set_up_waits == 3, count
        assert count.commands > 10
        # A tick's 4 claims, a pipeline per shard they touch, all at once.
        assert count.claim_scripts == 0 or 1 <= count.claim_round_trips_per_tick <= 3, count
        assert count.claim_ticks == 0 or count.claim_waits_per_tick == 1, count
    assert [sip.sustained for sip in report.sip] == [10, 10], report.lines()
