"""A node's subscriptions on a real Redis Cluster follow the cluster: the operators' live
feed keeps receiving every node's entries after the cluster node that carried its
subscription is killed (kill -9) and after the channel's slot is resharded; the bus is
subscribed again at a killed primary's promoted replica as soon as the cluster settles.

The cluster is this module's own: the kills and the reshard change it for good."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.conftest import DeviceClient, RunningNode
from tests.ops.conftest import place_call
from tests.ops.test_live import watch
from tests.redis_cluster import LocalCluster

pytestmark = pytest.mark.interop


async def a_call_is_seen(socket: Any, caller: DeviceClient) -> None:
    """A call to a user with no device (so no bus frame to miss in a gap) is missed at
    once: its entries, written on its own shard, reach the operator."""
    call_id = await place_call(caller, "nobody")
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not seen or seen[-1].get("to") != "missed":
            frame = orjson.loads(await socket.recv())
            if frame["type"] == "entry" and frame["call_id"] == call_id:
                seen.append(frame["entry"])
    assert seen[0]["event"] == "created"


async def hello_again(socket: Any, node: RunningNode) -> None:
    """The feed's word that it is subscribed again after a gap: read the snapshot again."""
    async with asyncio.timeout(15):
        while (frame := orjson.loads(await socket.recv()))["type"] != "hello":
            pass
    assert frame["node"] == node.node.node_id


async def test_the_live_feed_follows_a_killed_node_and_a_resharded_slot(
    cluster_node: Any, redis_cluster: LocalCluster
) -> None:
    node_a, node_b = await cluster_node(), await cluster_node()
    caller = await node_a.device("alice", "a1")
    socket = await watch(node_b)
    try:
        feed = node_b.node.ops_feed
        await a_call_is_seen(socket, caller)

        # The subscription sits on the primary that owns the channel's slot: kill it.
        slot = redis_cluster.slot_of(node_b.node.stores.ops_channel)
        carrier = redis_cluster.owner(slot)
        assert feed.subscribed_at == carrier.address
        redis_cluster.wait_replicated(carrier)
        killed_at = time.monotonic()
        failover = asyncio.create_task(asyncio.to_thread(redis_cluster.kill_primary, carrier))
        # Any live node hears a plain PUBLISH: the feed moves at once, not after the failover.
        await hello_again(socket, node_b)
        assert time.monotonic() - killed_at < 1.0 and not failover.done()
        assert feed.subscribed_at not in ("", carrier.address)
        await failover
        await a_call_is_seen(socket, caller)

        # The channel's slot moves to another primary: the subscription, wherever it is, still hears.
        source = redis_cluster.owner(slot)
        target = next(p for p in redis_cluster.live_primaries() if p.port != source.port)
        await asyncio.to_thread(redis_cluster.begin_migration(slot, target).finish)
        await a_call_is_seen(socket, caller)
    finally:
        await socket.close()


async def test_the_bus_is_subscribed_at_the_promoted_replica_once_the_cluster_settles(
    cluster_node: Any, redis_cluster: LocalCluster
) -> None:
    node_a, node_b = await cluster_node(), await cluster_node()
    victim = next(p for p in redis_cluster.live_primaries() if redis_cluster.replicas_of(p))
    # A callee whose bus channel lives on the victim.
    callee = next(
        user
        for user in (f"bob{n}" for n in range(10_000))
        if redis_cluster.owner(redis_cluster.slot_of(node_b.node.bus.channel(user))).port == victim.port
    )
    caller = await node_a.device("alice", "a1")
    phone = await node_b.device(callee, "b1")
    channel = node_b.node.bus.channel(callee)
    redis_cluster.wait_replicated(victim)

    _, promoted, _ = await asyncio.to_thread(redis_cluster.kill_primary, victim)
    settled = time.monotonic()
    async with asyncio.timeout(5):
        while True:
            with promoted.client() as client:
                if client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1:
                    break
            await asyncio.sleep(0.02)
    # redis-py's own reconnect retries would hold a dead node's subscriptions about 3 s.
    assert time.monotonic() - settled < 1.5

    call_id = await place_call(caller, callee)
    await phone.expect("call.incoming", call_id=call_id)
