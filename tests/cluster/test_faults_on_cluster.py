"""A steady stream of app calls across two nodes on a real Redis Cluster while a primary is
killed (kill -9, its replica promoted) and later slots are resharded: new calls start again
within a bounded time, no call is answered twice, every unanswered call ends `missed`
within its ring deadline and a few seconds, and every callee's sleeping iPad gets its
cancellation push.

The cluster is this module's own: the kill and the reshard change it for good."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import (
    DeviceClient,
    RunningNode,
    make_settings,
    register,
    start_node,
    stop_nodes,
)
from tests.redis_cluster import LocalCluster
from tests.test_call_pushes import VOIP_TOPIC

pytestmark = pytest.mark.interop

RING = 2.0
CALLS = 80
GAP = 0.25  # seconds between call starts
# After the ring deadline (or the failover's end, for a deadline inside it), until the
# timeout has fired and the iPad's cancellation left. A node retries the timeouts it
# leased and could not fire at its next tick; one whose lease reached the dying primary
# but whose reply never came back waits out the lease (RingTimeouts' lease_ms, 5 s).
MISSED_SLACK = 6.0
# After kill_primary() returns (the cluster settled), a new call.start must succeed within this.
RECOVERY = 5.0


@dataclass
class Callee:
    user: str
    phone: DeviceClient  # on node b
    tablet: DeviceClient  # on node a
    ipad_token: str  # registered, never connected: it hears of the call by push only


@dataclass
class Outcome:
    n: int
    started_at: float
    call_id: str = ""
    deadline: float = 0.0  # ring deadline, epoch seconds
    refused: str = ""
    answers: int = 0
    ended_by_hangup: bool = False
    missed_at: float = 0.0
    cancelled_at: float = 0.0  # when the iPad's cancellation push reached APNs
    notes: list[str] = field(default_factory=list)


@pytest.fixture
async def two_nodes(
    redis_cluster: LocalCluster,
    prefix: str,
    running_nodes: list[RunningNode],
    apns: tuple[APNsSimulator, dict[str, str]],
) -> AsyncIterator[tuple[RunningNode, RunningNode, APNsSimulator]]:
    sim, push_settings = apns
    nodes = []
    for _ in range(2):
        settings = make_settings(
            "", prefix, redis_cluster_nodes=redis_cluster.startup_nodes, ring_timeout=RING, **push_settings
        )
        nodes.append(await start_node(settings))
        running_nodes.append(nodes[-1])
    yield nodes[0], nodes[1], sim
    await stop_nodes(running_nodes)


async def _until_done(frame: dict[str, Any], send: Any, deadline: float, tried: list[str]) -> dict[str, Any]:
    """Send `frame` again while Redis answers `unavailable` (the failover), until `deadline`."""
    while True:
        reply: dict[str, Any] = await send(frame, timeout=15)
        tried.append(str(reply.get("code", reply["type"])))
        if reply.get("code") != "unavailable" or time.time() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def _status(node: RunningNode, callee: Callee, call_id: str) -> dict[str, Any] | None:
    response = await node.http().get(
        f"/v1/calls/{call_id}/status",
        params={"device_id": "b-ipad"},
        headers={"Authorization": f"Bearer {node.auth.mint(callee.user, 'device')}"},
    )
    return response.json() if response.status_code == 200 else None


def _cancellations(sim: APNsSimulator, call_id: str, token: str) -> list[Any]:
    return [
        r
        for r in sim.requests
        if r.status == 200
        and r.token == token
        and r.body
        and orjson.loads(r.body).get("call_id") == call_id
        and orjson.loads(r.body).get("type") == "call.cancelled"
    ]


async def _one_call(n: int, caller: DeviceClient, callee: Callee, node: RunningNode, sim: APNsSimulator) -> Outcome:
    outcome = Outcome(n, time.monotonic())
    # During the failover a reply may take the cluster client's retries, not only one command timeout.
    started = await caller.request({"type": "call.start", "callee": callee.user}, timeout=15)
    if started["type"] != "call.started":
        outcome.refused = started.get("code", started["type"])
        return outcome
    outcome.call_id, outcome.deadline = started["call_id"], started["ring_deadline"] / 1000
    call_id = outcome.call_id
    kind = ("answer", "hangup", "ring")[n % 3]
    if kind == "answer":
        # Both connected devices answer at once, as from the push: exactly one may win.
        await asyncio.sleep(0.3)
        replies = await asyncio.gather(
            *(
                _until_done(
                    {"type": "call.answer", "call_id": call_id}, device.request, outcome.deadline, outcome.notes
                )
                for device in (callee.phone, callee.tablet)
            )
        )
        outcome.answers = sum(reply["type"] == "ack" for reply in replies)
        if outcome.answers:
            reply = await _until_done(
                {"type": "call.hangup", "call_id": call_id}, caller.request, time.time() + 10, outcome.notes
            )
            assert reply["type"] == "ack", (n, reply)
            outcome.ended_by_hangup = True
    elif kind == "hangup":
        await asyncio.sleep(0.3)
        reply = await _until_done(
            {"type": "call.hangup", "call_id": call_id}, caller.request, outcome.deadline, outcome.notes
        )
        outcome.ended_by_hangup = reply["type"] == "ack"
    if not outcome.ended_by_hangup:
        # No answer and no hang-up: the ring deadline must end it, on whichever node leases its bucket.
        while True:
            status = await _status(node, callee, call_id)
            if status is not None and status["state"] == "missed":
                outcome.missed_at = time.time()
                break
            if time.time() > outcome.deadline + 30:  # the bound is checked at the end, against the failover
                raise AssertionError(f"call {n} ({kind}) still {status} 30s after its deadline")
            await asyncio.sleep(0.1)
    # The status endpoint says `missed` from the deadline alone; the cancellation goes when
    # a node fires the timeout, for a deadline inside the failover only once the cluster
    # serves the call again: how soon is checked at the end, against the failover.
    while not (cancels := _cancellations(sim, call_id, callee.ipad_token)):
        if time.time() > outcome.deadline + 30:
            timeline = await node.node.controller.calls.timeline(call_id)
            raise AssertionError(f"call {n} ({kind}): no cancellation push to the iPad; its timeline: {timeline}")
        await asyncio.sleep(0.1)
    outcome.cancelled_at = time.time()
    reason = orjson.loads(cancels[0].body)["reason"]
    assert reason == (
        "remote_ended"
        if kind == "hangup" and outcome.ended_by_hangup
        else "answered_elsewhere"
        if outcome.answers
        else "unanswered"
    ), (n, kind, reason)
    return outcome


async def test_calls_survive_a_killed_primary_and_a_reshard(
    two_nodes: tuple[RunningNode, RunningNode, APNsSimulator], redis_cluster: LocalCluster
) -> None:
    node_a, node_b, sim = two_nodes
    callees, callers = [], []
    for n in range(CALLS):
        ipad = sim.add_device(VOIP_TOPIC, online=False)
        await register(node_a, f"bob{n}", "b-ipad", voip_token=ipad.token)
        callees.append(
            Callee(
                f"bob{n}",
                await node_b.device(f"bob{n}", "b-phone"),
                await node_a.device(f"bob{n}", "b-tablet"),
                ipad.token,
            )
        )
        callers.append(await (node_a if n % 2 else node_b).device(f"alice{n}", "a-phone"))

    chaos_done = asyncio.Event()
    settled_at: list[float] = []
    settled_wall: list[float] = []

    async def chaos() -> None:
        await asyncio.sleep(2)
        _, promoted, _ = await asyncio.to_thread(redis_cluster.kill_primary)
        settled_at.append(time.monotonic())
        settled_wall.append(time.time())
        await asyncio.sleep(RECOVERY + 1)
        target = next(p for p in redis_cluster.live_primaries() if p.port != promoted.port)
        await asyncio.to_thread(redis_cluster.reshard, promoted, target, 200)
        await asyncio.sleep(1)
        chaos_done.set()

    calls: list[asyncio.Task[Outcome]] = []
    chaos_task = asyncio.create_task(chaos())
    for n in range(CALLS):
        if chaos_done.is_set():
            break
        callers_node = node_a if n % 2 else node_b
        calls.append(asyncio.create_task(_one_call(n, callers[n], callees[n], callers_node, sim)))
        await asyncio.sleep(GAP)
    await chaos_task
    outcomes = await asyncio.gather(*calls)

    assert settled_at, "the primary was never killed"
    refused = [o for o in outcomes if o.refused]
    # A connection the cluster client closes under a command is a dropped one (ClusterConnection): 503.
    assert all(o.refused == "unavailable" for o in refused), [(o.n, o.refused) for o in refused]
    # Calls start again soon after the failover settled, and from then on every call starts.
    after = [o for o in outcomes if o.started_at > settled_at[0]]
    first = next(o for o in after if not o.refused)
    assert first.started_at - settled_at[0] < RECOVERY, [(o.n, o.refused) for o in after]
    assert not [o.n for o in after if o.started_at > settled_at[0] + RECOVERY and o.refused]
    assert len(outcomes) - len(refused) >= CALLS // 3, [(o.n, o.refused) for o in outcomes]
    for outcome in outcomes:
        assert outcome.answers <= 1, (outcome.n, outcome.notes)
        if outcome.missed_at:
            # A deadline that fell inside the outage is due once the cluster serves its bucket again.
            assert outcome.missed_at <= max(outcome.deadline, settled_wall[0]) + MISSED_SLACK, (outcome, settled_wall)
            assert outcome.cancelled_at <= max(outcome.deadline, settled_wall[0]) + MISSED_SLACK, (
                outcome,
                settled_wall,
            )
    answered = [o for o in outcomes if o.answers]
    assert answered, "no call was answered"
    assert [o for o in outcomes if o.missed_at], "no call rang out"
