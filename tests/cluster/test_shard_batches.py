"""batch() on a real Redis Cluster (voip/stores/layout.py, on_shards()): one pipelined
write per shard touched, all written before any reply is read (one wait); a slot moved
under the client (MOVED), a flushed script cache (NOSCRIPT) and a dead primary followed,
each command run once; and, unlike redis-py's cluster pipeline, a dead primary met by a
batch cuts nothing in flight on the healthy shards.

The cluster is this module's own: the migration and the kill change it for good."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode as ClientNode
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

from tests.redis_cluster import LocalCluster
from voip.stores.layout import batch

pytestmark = pytest.mark.interop

# Counts its runs, slowly: half a second on its shard.
SLOW_COUNT = (
    "local t = redis.call('TIME') repeat local n = redis.call('TIME') "
    "until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 500000 return redis.call('INCR', KEYS[1])"
)


@pytest.fixture
async def client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    redis_cluster.wait_settled()
    host, port = redis_cluster.startup_nodes.split(",")[0].split(":")
    cluster = RedisCluster(
        startup_nodes=[ClientNode(host, int(port))],
        # Room for a failover (node timeout 2 s, then the election): about 6 s of retries.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=20),
    )
    await cluster.initialize()
    yield cluster
    await cluster.aclose()


def one_key_per_primary(cluster: LocalCluster) -> list[str]:
    """A key on each primary, in the order of cluster.live_primaries(); each its own hash
    tag, so that `f"{key}:more"` is on the same slot."""
    tag = uuid.uuid4().hex[:8]
    found: dict[int, str] = {}
    n = 0
    while len(found) < cluster.primaries:
        key = f"{{{tag}:{n}}}"
        found.setdefault(cluster.owner(cluster.slot_of(key)).port, key)
        n += 1
    return [found[primary.port] for primary in cluster.live_primaries()]


def record_io(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """("write", connection) for each request written from now on, ("read", connection) for
    each reply read."""
    events: list[tuple[str, int]] = []
    send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response

    async def sent(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        events.append(("write", id(self)))
        await send(self, command, check_health)

    async def got(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        reply = await read(self, *args, **kwargs)
        events.append(("read", id(self)))
        return reply

    monkeypatch.setattr(AbstractConnection, "send_packed_command", sent)
    monkeypatch.setattr(AbstractConnection, "read_response", got)
    return events


def incr(client: RedisCluster) -> AsyncScript:
    return client.register_script("return redis.call('INCR', KEYS[1])")


async def test_a_batch_is_one_write_per_shard_all_written_before_any_reply(
    redis_cluster: LocalCluster, client: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = one_key_per_primary(redis_cluster)
    script = incr(client)
    await client.script_load(script.script)  # on every primary, as after a node's first use

    def queue(pipe: Any) -> None:
        for key in keys:
            pipe.rpush(f"{key}:list", "a")
            pipe.execute_command("PUBLISH", "channel", "after its RPUSH")
        pipe.get(keys[0])

    events = record_io(monkeypatch)
    replies = await batch(cast(Redis, client), [(script, [key], []) for key in keys], queue)
    assert replies == [1, 1, 1, 1, 0, 1, 0, 1, 0, b"1"]
    writes = [connection for what, connection in events if what == "write"]
    assert len(writes) == len(keys), events  # a write per shard...
    assert [what for what, _ in events] == ["write"] * 3 + ["read"] * 10  # ...at once: one wait


async def test_a_moved_slot_and_a_flushed_script_cache_are_followed_each_command_once(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    keys = one_key_per_primary(redis_cluster)
    script = incr(client)
    await batch(cast(Redis, client), [(script, [keys[0]], [])])  # the map and the script cache, warm
    # keys[1]'s slot moves to keys[2]'s primary behind the client's back, and every
    # primary forgets its scripts.
    slot = redis_cluster.slot_of(keys[1])
    target = redis_cluster.owner(redis_cluster.slot_of(keys[2]))
    await asyncio.to_thread(redis_cluster.begin_migration(slot, target).finish)
    for primary in redis_cluster.live_primaries():
        with primary.client() as direct:
            direct.script_flush()
    assert client.get_node_from_key(keys[1]).port != target.port  # type: ignore[union-attr]  # stale map

    def queue(pipe: Any) -> None:
        for key in keys:
            pipe.rpush(f"{key}:list", "a")

    replies = await batch(cast(Redis, client), [(script, [key], []) for key in keys], queue)
    assert replies == [2, 1, 1, 1, 1, 1]
    for key in keys:
        assert await client.llen(f"{key}:list") == 1
    assert client.get_node_from_key(keys[1]).port == target.port  # type: ignore[union-attr]  # MOVED learnt


async def test_a_dead_primary_met_by_a_batch_cuts_nothing_in_flight_elsewhere(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    """What redis-py's cluster pipeline does (tests/test_redis_cluster.py): it closes every
    connection of the client, and a script in flight on a healthy shard runs twice."""
    keys = one_key_per_primary(redis_cluster)
    victim = redis_cluster.owner(redis_cluster.slot_of(keys[0]))
    slow_count, count = client.register_script(SLOW_COUNT), incr(client)
    for script in (slow_count, count):  # loaded on every primary while all are alive
        await client.script_load(script.script)
    await client.set(keys[0], "x", ex=60)  # the client knows the victim, and will not hear it died
    assert redis_cluster.wait_replicated(victim) == 1
    killed, _, _ = await asyncio.to_thread(redis_cluster.kill_primary, victim)
    try:
        # A slow script in flight on a healthy shard while a batch meets the dead primary.
        running = asyncio.create_task(slow_count(keys=[f"{keys[1]}:runs"]))
        await asyncio.sleep(0.2)
        replies = await batch(
            cast(Redis, client),
            [(count, [f"{keys[2]}:runs"], [])],
            lambda pipe: (pipe.get(keys[0]), pipe.incr(f"{keys[2]}:n")),
        )
        assert replies == [1, b"x", 1]  # the dead shard's GET sent again, to the promoted replica
        assert await running == 1
        assert await client.get(f"{keys[1]}:runs") == b"1"  # ran once
        assert await client.get(f"{keys[2]}:runs") == b"1"
    finally:
        await asyncio.to_thread(redis_cluster.restart, killed)
