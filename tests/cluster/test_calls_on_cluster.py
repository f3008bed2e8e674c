"""Calls, the status endpoint and the operators' calls list on a real Redis Cluster (three
primaries, three replicas), with nodes given REDIS_CLUSTER_NODES; then a reshard that moves
a callee's bus channel away under a subscribed node."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tests.ops.conftest import ops_get
from tests.redis_cluster import LocalCluster
from tests.test_ring_claims import one_call_per_bucket, record_writes
from voip import redis_pool
from voip.clock import now_ms
from voip.stores.layout import BUCKETS, KeyLayout

pytestmark = pytest.mark.interop


async def test_a_call_across_two_nodes_on_a_cluster(cluster_node: Any) -> None:
    node_a, node_b = await cluster_node(), await cluster_node()
    assert isinstance(node_a.node.connections.client, RedisCluster)
    caller = await node_a.device("alice", "a1")
    phone = await node_b.device("bob", "b1")

    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    await phone.request({"type": "call.answer", "call_id": call_id, "sdp": "v=0"})
    assert (await caller.expect("call.answered", call_id=call_id))["device_id"] == "b1"

    status = await node_b.http().get(
        f"/v1/calls/{call_id}/status",
        headers={"Authorization": f"Bearer {node_b.auth.mint('bob', 'device')}"},
        params={"device_id": "b1"},
    )
    assert status.status_code == 200, status.text
    assert status.json()["state"] == "answered"

    await phone.request({"type": "call.hangup", "call_id": call_id})
    assert (await caller.expect("call.ended", call_id=call_id))["reason"] == "remote_ended"
    listed = (await ops_get(node_a, "/v1/ops/calls")).json()["calls"]
    assert [c["call_id"] for c in listed] == [call_id]
    for node in (node_a, node_b):  # a batch of "delivered" entries: one pipeline over the slots
        await node.node.deliveries.flush()
    delivered = {
        (e["type"], e["device"], e["node"])
        for e in await node_a.node.stores.calls.timeline(call_id)
        if e["event"] == "delivered"
    }
    assert {("call.started", "a1", node_a.node.node_id), ("call.incoming", "b1", node_b.node.node_id)} <= delivered


async def test_ring_timeouts_fire_on_a_cluster(cluster_node: Any) -> None:
    node_a, node_b = await cluster_node(ring_timeout=0.5), await cluster_node(ring_timeout=0.5)
    caller = await node_a.device("alice", "a1")
    phones = [await node_b.device(f"bob{n}", "b1") for n in range(6)]
    call_ids = [(await caller.request({"type": "call.start", "callee": f"bob{n}"}))["call_id"] for n in range(6)]
    for phone, call_id in zip(phones, call_ids, strict=True):
        assert (await phone.expect("call.missed", call_id=call_id, timeout=3))["reason"] == "unanswered"
    for call_id in call_ids:
        await caller.expect("call.missed", call_id=call_id)


async def test_a_ticks_ring_claims_on_a_cluster_are_one_pipeline_per_shard_and_lease_once(
    cluster_node: Any, redis_cluster: LocalCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_a, node_b = await cluster_node(), await cluster_node()
    for node in (node_a, node_b):
        await node.node.timeouts.stop()  # the test ticks for them...
    await asyncio.sleep(0.3)  # ...once their own ticks' bucket leases (0.2 s) are over
    redis_cluster.wait_settled()
    keys, now = KeyLayout(prefix), now_ms()
    due = one_call_per_bucket()
    for bucket, call_id in due.items():
        await node_a.node.connections.client.zadd(keys.ring_bucket(bucket), {call_id: now - 1})
    shards = {redis_cluster.owner(redis_cluster.slot_of(keys.ring_bucket(b))).port for b in range(BUCKETS)}
    assert len(shards) == 3
    claim = node_a.node.stores.calls._claim
    for primary in redis_cluster.live_primaries():  # as after the nodes' first ticks
        with primary.client() as client:
            client.script_load(claim.script)

    written = record_writes(monkeypatch)
    by_a = await node_a.node.stores.calls.claim_due_timeouts(now, 5000, node="a", buckets=list(range(8)))
    written.clear()
    by_b = await node_b.node.stores.calls.claim_due_timeouts(now, 5000, node="b", buckets=list(range(BUCKETS)))
    # b's 16 claims in one pipeline per shard, written at once (layout.on_shards(), not
    # redis-py's cluster pipeline: tests/cluster/test_shard_batches.py).
    claims = [w.count(claim.sha.encode()) for w in written if claim.sha.encode() in w]
    assert len(claims) == len(shards) and sum(claims) == BUCKETS, claims
    # a's buckets were leased to a, with the timeouts in them: each due timeout went to one node.
    assert len(by_a) == 8 and sorted(by_a + by_b) == sorted(due.values())


async def test_a_large_timeline_batch_reaches_operators_through_a_small_pool(
    cluster_node: Any, redis_cluster: LocalCluster, prefix: str
) -> None:
    # A delivery log batch of many calls' entries: each entry published on its own took a
    # connection of its own at once, past the pool's size (MaxConnectionsError).
    node = await cluster_node(redis_pool_size=4)
    channel = KeyLayout(prefix).ops_channel
    listener = Redis(host="127.0.0.1", port=redis_cluster.live_nodes()[-1].port)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)
    try:
        entries = [(f"call-{n % 20}", {"at": n, "event": "delivered"}) for n in range(200)]
        await node.node.stores.calls.append_timelines(entries)
        heard = 0
        async with asyncio.timeout(10):
            while heard < len(entries):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                heard += message is not None
        timeline = await node.node.stores.calls.timeline("call-7")
        assert [e["at"] for e in timeline] == list(range(7, 200, 20))
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_a_device_connects_to_a_shard_whose_last_subscriber_left_a_while_ago(
    cluster_node: Any, redis_cluster: LocalCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shard's pub/sub connection with no channel left, idle past the health-check
    # interval: the next SSUBSCRIBE pinged on it while its reader was reading it
    # ("read() called while another coroutine is already waiting"), and the device's
    # WebSocket got a 500 (found by python -m bench --scale --redis-cluster).
    monkeypatch.setattr(redis_pool, "HEALTH_CHECK_INTERVAL", 0.2)
    node, caller_node = await cluster_node(), await cluster_node()
    own = redis_cluster.owner(redis_cluster.slot_of(f"{prefix}bus")).port
    user = next(
        f"bob{n}"
        for n in range(100)
        if redis_cluster.owner(redis_cluster.slot_of(node.node.bus.channel(f"bob{n}"))).port != own
    )
    phone = await node.device(user, "b1")
    await phone.socket.close()
    async with asyncio.timeout(5):
        while True:  # the node unsubscribes once the socket is gone
            if node.node.bus.channel(user).encode() not in node.node.bus._pubsub.shard_channels:
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # past the health-check interval

    phone = await node.device(user, "b1")
    caller = await caller_node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": user}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)


async def test_the_bus_follows_a_resharded_channel(cluster_node: Any, redis_cluster: LocalCluster) -> None:
    node_a, node_b = await cluster_node(), await cluster_node()
    caller = await node_a.device("alice", "a1")
    phone = await node_b.device("bob", "b1")
    slot = redis_cluster.slot_of(node_b.node.bus.channel("bob"))
    source = redis_cluster.owner(slot)
    target = next(p for p in redis_cluster.live_primaries() if p.port != source.port)
    migration = redis_cluster.begin_migration(slot, target)
    migration.finish()
    # The old owner tells node_b the channel left (SUNSUBSCRIBE); node_b subscribes at the
    # new owner. Frames published in between are lost, as in any pub/sub gap.
    channel = node_b.node.bus.channel("bob")
    async with asyncio.timeout(10):
        while True:
            with target.client() as client:
                if client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1:
                    break
            await asyncio.sleep(0.05)

    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id, timeout=5)
    await phone.request({"type": "call.decline", "call_id": call_id})
    assert (await caller.expect("call.declined", call_id=call_id))["reason"] == "remote_ended"
