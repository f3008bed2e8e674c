"""Issue 9, item 7: a call keeps the ring deadline and retention of the node that created
it, whichever node answers, ends or times it out."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.conftest import RunningNode

WEEK = 7 * 86400
# A node's settings, and another's that differ in both.
A = {"ring_timeout": 2.0, "call_retention": 600}
B = {"ring_timeout": 90.0, "call_retention": 7200}


async def _ttl(redis: aioredis.Redis, node: RunningNode, call_id: str) -> tuple[int, int]:
    call_key, timeline_key = node.node.stores.keys.call(call_id), node.node.stores.keys.timeline(call_id)
    return await redis.ttl(call_key), await redis.ttl(timeline_key)


def _near(ttls: tuple[int, int], expected: int) -> bool:
    # TTL counts down in whole seconds while the test runs; a few seconds of slack, far
    # less than the difference between the two nodes' settings.
    return all(expected - 10 <= ttl <= expected for ttl in ttls)


async def test_answered_and_ended_through_another_node_keeps_the_creators_values(
    node_factory, redis: aioredis.Redis
) -> None:
    node_a: RunningNode = await node_factory(**A)
    node_b: RunningNode = await node_factory(**B)
    caller = await node_a.device("alice", "a-phone")
    callee = await node_b.device("bob", "b-phone")

    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]
    await callee.expect("call.incoming", call_id=call_id)
    call = await node_b.node.stores.calls.get(call_id)
    assert call is not None and call.retention == 600
    assert call.ring_deadline - call.created_at == 2000
    score = await redis.zscore(node_a.node.stores.keys.ring_deadlines(call_id), call_id)
    assert score == call.ring_deadline == started["ring_deadline"]
    assert _near(await _ttl(redis, node_a, call_id), 2 + 600)

    assert (await callee.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
    await caller.expect("call.answered", call_id=call_id)
    # Node B's retention (7200) would give a week + 7200.
    assert _near(await _ttl(redis, node_a, call_id), WEEK + 600)

    ended = await callee.request({"type": "call.hangup", "call_id": call_id})
    assert ended["state"] == "ended"
    assert _near(await _ttl(redis, node_a, call_id), 600)


async def test_another_node_times_the_call_out_at_the_creators_deadline(node_factory, redis: aioredis.Redis) -> None:
    node_a: RunningNode = await node_factory(**A)
    node_b: RunningNode = await node_factory(**B)
    # Only node B fires ring timeouts.
    await node_a.node.timeouts.stop()
    caller = await node_a.device("alice", "a-phone")
    callee = await node_b.device("bob", "b-phone")

    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]
    missed = await caller.expect("call.missed", call_id=call_id, timeout=10)
    assert missed["reason"] == "unanswered"
    await callee.expect("call.missed", call_id=call_id)
    call = await node_b.node.stores.calls.get(call_id)
    assert call is not None and call.ended_at is not None
    # Node A's 2 s deadline, not node B's 90 s; fired by node B's poller.
    assert call.ended_at >= started["ring_deadline"]
    assert call.ended_at - started["ring_deadline"] < 5000
    timeline = await node_b.node.stores.calls.timeline(call_id)
    fired = [e for e in timeline if e.get("to") == "missed"]
    assert fired and fired[0]["node"] == node_b.node.node_id
    assert await redis.zscore(node_a.node.stores.keys.ring_deadlines(call_id), call_id) is None
    assert _near(await _ttl(redis, node_a, call_id), 600)


async def test_a_declined_call_keeps_the_creators_retention(node_factory, redis: aioredis.Redis) -> None:
    node_a: RunningNode = await node_factory(**A)
    node_b: RunningNode = await node_factory(**B)
    caller = await node_b.device("alice", "a-phone")  # created on B this time
    callee = await node_a.device("bob", "b-phone")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await callee.expect("call.incoming", call_id=call_id)
    call = await node_a.node.stores.calls.get(call_id)
    assert call is not None and call.ring_deadline - call.created_at == 90_000
    # Declined through node A: node B's retention stays.
    assert (await callee.request({"type": "call.decline", "call_id": call_id}))["type"] == "ack"
    await caller.expect("call.declined", call_id=call_id)
    assert _near(await _ttl(redis, node_a, call_id), 7200)
