"""A node's subscriptions on a real Redis Cluster follow the cluster: the bus is subscribed
again at a killed primary's promoted replica as soon as the cluster settles.

The cluster is this module's own: the kills change it for good."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.ops.conftest import place_call
from tests.redis_cluster import LocalCluster

pytestmark = pytest.mark.interop


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
