"""Issue 16's ghost-call experiment, its seeded 100-call form (bench/ghosts.py): real
in-process nodes on the test Redis, the real push path to the APNs simulator, phones on
simulated time. Asserts the goals: no ghost ring longer than one status round trip (plus
the report) where the phone can reach the status endpoint, none past `expires_at` where
it cannot; no lost call; no wrong outcome."""

from __future__ import annotations

import asyncio

import pytest

from bench import ghost_score, ghosts
from bench.ghost_population import population
from tests.conftest import make_settings


async def test_seeded_hundred_calls_meet_the_goals(redis_url: str) -> None:
    scores = await ghosts.experiment(100, 1, redis_url, conditions=("baseline", "half_open"))
    for score in scores:
        assert score.calls == 100
        assert score.ok, "\n".join(ghosts.report([score]))
    baseline, half_open = scores
    # The experiment exercised what it claims to: late pushes, cancellations, and the
    # half-open sockets' rings that only `expires_at` or the network's return could end.
    assert baseline.late_deliveries > 0 and baseline.cancellations_needed > 0
    assert half_open.ghosts and max(half_open.ghosts) > 1.0


def test_population_is_seeded() -> None:
    assert population(20, 7) == population(20, 7)
    assert population(20, 7) != population(20, 8)


def test_judge_counts_a_ghost_past_its_round_trip_and_a_wrong_reason() -> None:
    truth = ghost_score.Truth("c1", "cancelled", over_at=10.0)
    rings = [
        ghost_score.Ring("c1", "d1", 0.0, 10.2, "verdict", "remoteEnded", 0.3, 45.0, True),
        ghost_score.Ring("c1", "d2", 0.0, 12.0, "push", "answeredElsewhere", 0.3, 45.0, True),
    ]
    score = ghost_score.score("t", [truth], rings, {"c1": {"d1"}}, [], 0)
    assert len(score.ghosts) == 2 and score.ghosts_over_goal == 1 and score.wrong == 1 and score.lost == 0
    assert not score.ok


def test_judge_says_when_a_ring_outlasted_its_goal_because_a_kill_cut_its_socket() -> None:
    truth = ghost_score.Truth("c1", "cancelled", over_at=10.0)
    cut = ghost_score.Ring("c1", "d1", 0.0, 11.4, "verdict", "remoteEnded", 0.3, 45.0, True, socket_lost=9.0)
    after = ghost_score.Ring("c1", "d2", 0.0, 11.4, "verdict", "remoteEnded", 0.3, 45.0, True, socket_lost=10.5)
    score = ghost_score.score("t", [truth], [cut, after], {"c1": {"d1"}}, [], 0)
    assert score.ghosts_over_goal == 2
    first, second = (m.line() for m in score.misses)
    assert "its socket was cut 1.000 s before the call was over (a node killed)" in first
    assert "socket" not in second  # cut after the end: not why it rang on


def test_an_unknown_condition_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="unknown node_kiled; the conditions are baseline, node_killed"):
        ghosts.main(calls=1, conditions=["node_kiled"])


async def test_a_killed_node_leaves_nothing_running_in_the_process(redis_url: str, prefix: str) -> None:
    """node_killed kills hundreds of nodes in one process: each must be gone as a killed
    process is, or the survivors' work slows every later step."""
    experiment = ghosts.Experiment("node_killed", population(1, 1), redis_url, 1)
    experiment.settings = make_settings(redis_url, prefix)
    before = asyncio.all_tasks()
    await experiment._start_node()
    [running] = experiment.nodes
    alice = await running.device("alice", "a-phone")
    assert len(asyncio.all_tasks() - before) > 3  # the node's loops, its bus reader, the socket
    await experiment._kill(running)
    # What the kill cut may still be closing (redis-py disconnects its cut connections in
    # tasks of its own): those end; a node's loops would not.
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    if left:
        await asyncio.wait(left, timeout=2)
        left = [t for t in left if not t.done()]
    assert left == [], [t.get_coro() for t in left]
    await alice.socket.close()
