"""The Redis Cluster harness (tests/redis_cluster.py) against redis-py's asyncio cluster
client: keys spread over every primary, a primary killed and its replica promoted, slots
resharded (MOVED) and a slot caught half-migrated (ASK). One cluster for the module: each
test leaves it whole (killed nodes restarted), whatever the one before did to it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import ClusterNode as ClientNode
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AskError, RedisError

from tests.redis_cluster import SLOTS, LocalCluster

pytestmark = pytest.mark.interop


@pytest.fixture
async def client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    redis_cluster.wait_settled()
    host, port = redis_cluster.startup_nodes.split(",")[0].split(":")
    cluster = RedisCluster(
        startup_nodes=[ClientNode(host, int(port))],
        protocol=3,
        decode_responses=True,
        # Room for a failover (node timeout 2 s, then the election): about 6 s of retries.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=20),
    )
    await cluster.initialize()
    yield cluster
    await cluster.aclose()


async def read_all(client: RedisCluster, keys: list[str]) -> list[object]:
    return [await client.get(key) for key in keys]


def keys_on_every_primary(cluster: LocalCluster, count: int = 60) -> list[str]:
    prefix = uuid.uuid4().hex[:8]
    keys = [f"{prefix}:{index}" for index in range(count)]
    owners = {cluster.owner(cluster.slot_of(key)).port for key in keys}
    assert len(owners) == cluster.primaries, owners
    return keys


async def test_the_cluster_has_three_primaries_each_with_a_replica_and_every_slot_served(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    primaries = redis_cluster.live_primaries()
    assert len(primaries) == 3 and len(redis_cluster.live_nodes()) == 6
    assert all(len(redis_cluster.replicas_of(primary)) == 1 for primary in primaries)
    slots = await client.cluster_slots()
    assert sum(end - start + 1 for start, end in slots) == SLOTS
    assert {node.port for node in client.get_primaries()} == {primary.port for primary in primaries}


async def test_set_and_get_across_slots(redis_cluster: LocalCluster, client: RedisCluster) -> None:
    keys = keys_on_every_primary(redis_cluster)
    for key in keys:
        await client.set(key, f"value of {key}", ex=60)
    assert await read_all(client, keys) == [f"value of {key}" for key in keys]
    # Each key is where the cluster says its slot lives, not just anywhere.
    for key in keys[:6]:
        owner = redis_cluster.owner(redis_cluster.slot_of(key))
        with owner.client() as direct:
            assert direct.get(key) == f"value of {key}".encode()


async def test_a_killed_primary_is_replaced_by_its_replica_and_the_client_keeps_going(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    keys = keys_on_every_primary(redis_cluster)
    for key in keys:
        await client.set(key, "before", ex=60)
    victim = redis_cluster.owner(redis_cluster.slot_of(keys[0]))
    assert redis_cluster.wait_replicated(victim) == 1

    killed, promoted, seconds = await asyncio.to_thread(redis_cluster.kill_primary, victim)
    try:
        assert killed.port == victim.port and promoted.port != victim.port
        assert redis_cluster.owner(redis_cluster.slot_of(keys[0])).port == promoted.port
        assert seconds < 20, seconds
        # The same client object: connection refused on the dead primary, then MOVED to the
        # promoted one. Nothing acknowledged (and replicated) before the kill is lost.
        assert await read_all(client, keys) == ["before"] * len(keys)
        for key in keys:
            await client.set(key, "after", ex=60)
        assert await read_all(client, keys) == ["after"] * len(keys)
        assert client.get_node_from_key(keys[0]).port == promoted.port  # type: ignore[union-attr]
    finally:
        await asyncio.to_thread(redis_cluster.restart, killed)
    # Back as a replica of the node that took over, with its data.
    assert redis_cluster.replicas_of(promoted) == [killed]
    with killed.client() as direct:
        direct.execute_command("READONLY")
        assert redis_cluster.wait_replicated(promoted) == 1
        assert direct.get(keys[0]) == b"after"


async def test_a_cluster_pipeline_that_meets_a_dead_primary_cuts_commands_in_flight_elsewhere(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    """Why a node's batches do not use redis-py's cluster pipeline (voip/stores/layout.py,
    on_shards(); tests/cluster/test_shard_batches.py): a single command that meets a dead
    primary drops that shard's connections only; a cluster pipeline closes every
    connection of the client, so a script in flight on a healthy shard loses its reply and
    is sent again: it runs twice (or fails, while the cluster is still down)."""
    keys = keys_on_every_primary(redis_cluster)
    victim = redis_cluster.owner(redis_cluster.slot_of(keys[0]))
    healthy = [k for k in keys if redis_cluster.owner(redis_cluster.slot_of(k)).port != victim.port][:2]
    # Counts its runs, slowly: half a second on a healthy shard.
    slow_count = client.register_script(
        "local t = redis.call('TIME') repeat local n = redis.call('TIME') "
        "until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 500000 return redis.call('INCR', KEYS[1])"
    )
    other = RedisCluster(
        startup_nodes=[ClientNode("127.0.0.1", victim.port)],
        protocol=3,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=20),
    )
    await other.initialize()
    for each in (client, other):
        await each.set(keys[0], "x", ex=60)  # both know the victim, and will not hear it died
    killed, _, _ = await asyncio.to_thread(redis_cluster.kill_primary, victim)
    try:
        # The client meets the dead primary with a single command while its script runs.
        running = asyncio.create_task(slow_count(keys=[healthy[0]], client=client))
        await asyncio.sleep(0.2)
        await client.get(keys[0])
        assert await running == 1
        # The other client meets it with a pipeline.
        running = asyncio.create_task(slow_count(keys=[healthy[1]], client=other))
        await asyncio.sleep(0.2)
        async with other.pipeline(transaction=False) as pipe:
            pipe.get(keys[0])
            await pipe.execute()
        with contextlib.suppress(RedisError):  # or failed, if the cluster were down
            await running
        assert await client.get(healthy[1]) == "2"  # ran twice
    finally:
        await client.delete(*healthy)
        await other.aclose()
        await asyncio.to_thread(redis_cluster.restart, killed)


async def test_a_reshard_moves_slots_under_a_client_that_follows_moved(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    keys = keys_on_every_primary(redis_cluster, count=300)
    for key in keys:
        await client.set(key, key, ex=60)
    source, target = redis_cluster.live_primaries()[:2]
    moving = [key for key in keys if redis_cluster.owner(redis_cluster.slot_of(key)).port == source.port]
    before = {key: redis_cluster.owner(redis_cluster.slot_of(key)).port for key in moving}

    # Half of source's slots (about 2730) go to target, keys and all.
    await asyncio.to_thread(redis_cluster.reshard, source, target, 2730)
    moved = [key for key in moving if redis_cluster.owner(redis_cluster.slot_of(key)).port == target.port]
    assert moved and all(before[key] == source.port for key in moved)
    assert client.get_node_from_key(moved[0]).port == source.port  # type: ignore[union-attr]  # stale map
    assert await read_all(client, keys) == keys
    assert client.get_node_from_key(moved[0]).port == target.port  # type: ignore[union-attr]  # MOVED learnt

    # And back, by rebalance: every primary again holds a third of the slots.
    await asyncio.to_thread(redis_cluster.rebalance)
    counts = [
        sum(end - start + 1 for start, end, *_ in primary_slots(redis_cluster, p.port))
        for p in redis_cluster.live_primaries()
    ]
    assert max(counts) - min(counts) <= 2 * SLOTS // 100, counts  # rebalance's own 2 % threshold
    assert await read_all(client, keys) == keys


def primary_slots(cluster: LocalCluster, port: int) -> list[tuple[int, int]]:
    with cluster.live_nodes()[0].client() as direct:
        return [
            (int(start), int(end))
            for start, end, primary, *_ in direct.execute_command("CLUSTER", "SLOTS")
            if int(primary[1]) == port
        ]


async def test_a_slot_half_migrated_answers_ask_and_the_client_follows_it(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    tag = uuid.uuid4().hex[:8]
    keys = [f"{{{tag}}}:{index}" for index in range(10)]  # one hash tag: one slot
    for key in keys:
        await client.set(key, key, ex=60)
    slot = redis_cluster.slot_of(keys[0])
    source = redis_cluster.owner(slot)
    target = next(p for p in redis_cluster.live_primaries() if p.port != source.port)

    migration = redis_cluster.begin_migration(slot, target)
    migration.move(keys[:5])
    with source.client() as direct:
        with pytest.raises(AskError) as asked:
            direct.get(keys[0])
        assert (asked.value.slot_id, asked.value.port) == (slot, target.port)
    # Moved keys are read from the target (ASKING first), the others from the source.
    assert await read_all(client, keys) == keys
    await client.set(keys[0], "written during the migration")
    with target.client() as direct:
        direct.execute_command("ASKING")
        assert direct.get(keys[0]) == b"written during the migration"

    await asyncio.to_thread(migration.finish)
    assert redis_cluster.owner(slot).port == target.port
    assert await read_all(client, keys[1:]) == keys[1:]
    assert await client.get(keys[0]) == "written during the migration"
