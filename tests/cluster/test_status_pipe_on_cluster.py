"""The status endpoint's own pipe on a real Redis Cluster (voip/redis_cluster_pipe.py):
the call's slot moved (MOVED), half-migrated (ASK), a script cache flushed (NOSCRIPT) and
the call's primary killed (503 until its replica is promoted, then answers again); and on
a one-node cluster behind TLS and a password.

The cluster is this module's own: the migrations and the kill change it for good."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RunningNode
from tests.ports import free_port
from tests.redis_cluster import SLOTS, ClusterNode, LocalCluster
from tests.redis_process import RedisProcess
from tests.redis_tls import make_ca, make_certificates, tls_options
from voip.redis_cluster_pipe import ClusterPipe

pytestmark = pytest.mark.interop


async def ringing_call(node: RunningNode) -> str:
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    call_id: str = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    return call_id


async def status(node: RunningNode, call_id: str) -> tuple[int, dict[str, Any]]:
    response = await node.http().get(
        f"/v1/calls/{call_id}/status",
        headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"},
        params={"device_id": "b1"},
    )
    return response.status_code, response.json()


def pipe_of(node: RunningNode) -> ClusterPipe:
    pipe = node.node.status_pipe
    assert isinstance(pipe, ClusterPipe)
    return pipe


def slot_of_call(redis_cluster: LocalCluster, node: RunningNode, call_id: str) -> int:
    return redis_cluster.slot_of(node.node.stores.keys.call(call_id))


def elsewhere(redis_cluster: LocalCluster, owner: ClusterNode) -> ClusterNode:
    return next(primary for primary in redis_cluster.live_primaries() if primary.port != owner.port)


def keys_in_slot(node: ClusterNode, slot: int) -> list[str]:
    with node.client() as client:
        return [key.decode() for key in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)]


async def test_status_goes_through_the_pipe_to_the_calls_primary(
    cluster_node: Any, redis_cluster: LocalCluster
) -> None:
    node = await cluster_node()
    call_id = await ringing_call(node)
    answers = await asyncio.gather(*(status(node, call_id) for _ in range(20)))
    assert {code for code, _ in answers} == {200}
    assert {body["state"] for _, body in answers} == {"ringing"}
    pipe = pipe_of(node)
    owner = redis_cluster.owner(slot_of_call(redis_cluster, node, call_id))
    assert pipe.slots.owners[slot_of_call(redis_cluster, node, call_id)] == ("127.0.0.1", owner.port)
    assert {port for _, port in pipe.slots.primaries()} == {p.port for p in redis_cluster.live_primaries()}
    # Each check is on the call's timeline: the script ran on the call's own primary.
    checks = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]
    assert len(checks) == 20


async def test_a_slot_moved_under_the_pipe_is_followed(cluster_node: Any, redis_cluster: LocalCluster) -> None:
    node = await cluster_node()
    call_id = await ringing_call(node)
    assert (await status(node, call_id))[0] == 200  # the slot map is read
    slot = slot_of_call(redis_cluster, node, call_id)
    source = redis_cluster.owner(slot)
    target = elsewhere(redis_cluster, source)

    # The call's slot, keys and all, to another primary: the old one answers MOVED.
    await asyncio.to_thread(redis_cluster.begin_migration(slot, target).finish)
    pipe = pipe_of(node)
    assert pipe.slots.owners[slot] == ("127.0.0.1", source.port)  # not told yet
    code, body = await status(node, call_id)
    assert (code, body["state"]) == (200, "ringing")
    assert pipe.slots.owners[slot] == ("127.0.0.1", target.port)  # the map read again


async def test_a_half_migrated_slot_is_followed_by_asking(cluster_node: Any, redis_cluster: LocalCluster) -> None:
    node = await cluster_node()
    call_id = await ringing_call(node)
    assert (await status(node, call_id))[0] == 200
    slot = slot_of_call(redis_cluster, node, call_id)
    source = redis_cluster.owner(slot)
    target = elsewhere(redis_cluster, source)

    migration = redis_cluster.begin_migration(slot, target)
    try:
        call_keys = keys_in_slot(source, slot)
        assert node.node.stores.keys.call(call_id) in call_keys
        migration.move(call_keys)  # the call has gone; its slot is still the source's
        code, body = await status(node, call_id)
        assert (code, body["state"]) == (200, "ringing")
        assert pipe_of(node).slots.owners[slot] == ("127.0.0.1", source.port)  # the map is kept
    finally:
        # Before the timeline is read through redis-py: its cluster client sends ASKING and
        # the command on two pooled connections, and loops MOVED/ASK when they differ.
        await asyncio.to_thread(migration.finish)
    assert (await status(node, call_id))[0] == 200
    # The check made during the migration was recorded with the call, on the target.
    checks = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]
    assert len(checks) == 3


async def test_a_read_through_redis_py_during_a_migration_is_never_a_500(
    cluster_node: Any, redis_cluster: LocalCluster
) -> None:
    # redis-py 8.1's cluster client sends ASKING and the redirected command on two pooled
    # connections when the target has several idle ones, and loops MOVED/ASK until it gives
    # up with ClusterError("TTL exhausted"): that is Redis unavailable for now (503), not a 500.
    node = await cluster_node()
    call_id = await ringing_call(node)
    slot = slot_of_call(redis_cluster, node, call_id)
    source = redis_cluster.owner(slot)
    target = elsewhere(redis_cluster, source)
    operator = {"Authorization": f"Bearer {node.auth.mint('ops', 'operator')}"}
    client = node.http()
    # Several idle connections to every primary, the target's among them.
    await asyncio.gather(*(client.get("/v1/ops/calls", headers=operator) for _ in range(16)))
    migration = redis_cluster.begin_migration(slot, target)
    try:
        migration.move(keys_in_slot(source, slot))
        answers = [await client.get(f"/v1/ops/calls/{call_id}", headers=operator) for _ in range(4)]
    finally:
        await asyncio.to_thread(migration.finish)
    assert {a.status_code for a in answers} <= {200, 503}, [(a.status_code, a.text[:200]) for a in answers]
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"] == "unavailable" and answer.headers["Retry-After"]
    assert (await client.get(f"/v1/ops/calls/{call_id}", headers=operator)).status_code == 200


async def test_a_call_split_by_a_migration_is_503_until_it_is_whole(
    cluster_node: Any, redis_cluster: LocalCluster
) -> None:
    node = await cluster_node(redis_command_timeout=1.0)
    call_id = await ringing_call(node)
    assert (await status(node, call_id))[0] == 200
    slot = slot_of_call(redis_cluster, node, call_id)
    source = redis_cluster.owner(slot)
    migration = redis_cluster.begin_migration(slot, elsewhere(redis_cluster, source))
    try:
        call_keys = keys_in_slot(source, slot)
        migration.move([node.node.stores.keys.call(call_id)])  # its hash has gone, its timeline not yet
        began = time.monotonic()
        assert (await status(node, call_id))[0] == 503  # TRYAGAIN until the command timeout
        assert 0.9 < time.monotonic() - began < 5
        migration.move([key for key in call_keys if key != node.node.stores.keys.call(call_id)])
        code, body = await status(node, call_id)
        assert (code, body["state"]) == (200, "ringing")
    finally:
        await asyncio.to_thread(migration.finish)


async def test_a_flushed_script_cache_is_loaded_again(cluster_node: Any, redis_cluster: LocalCluster) -> None:
    node = await cluster_node()
    call_id = await ringing_call(node)
    assert (await status(node, call_id))[0] == 200
    owner = redis_cluster.owner(slot_of_call(redis_cluster, node, call_id))
    sha = node.node.stores.calls._status.sha
    with owner.client() as client:
        client.script_flush()
        assert client.script_exists(sha) == [False]
    code, body = await status(node, call_id)
    assert (code, body["state"]) == (200, "ringing")
    with owner.client() as client:
        assert client.script_exists(sha) == [True]  # NOSCRIPT, SCRIPT LOAD, and the check again


async def test_a_killed_primary_costs_503s_then_answers_again_from_its_replica(
    cluster_node: Any, redis_cluster: LocalCluster
) -> None:
    # A short command timeout: a request that meets the failover gets its 503 soon.
    node = await cluster_node(redis_command_timeout=1.0)
    call_id = await ringing_call(node)
    assert (await status(node, call_id))[0] == 200
    victim = redis_cluster.owner(slot_of_call(redis_cluster, node, call_id))
    assert redis_cluster.wait_replicated(victim) == 1

    answers: list[tuple[float, int]] = []
    failover = asyncio.create_task(asyncio.to_thread(redis_cluster.kill_primary, victim))
    try:
        while not failover.done():
            answers.append((time.monotonic(), (await status(node, call_id))[0]))
            await asyncio.sleep(0.05)
        _, promoted, seconds = await failover
        settled = time.monotonic()
        while (code := (await status(node, call_id))[0]) != 200 and time.monotonic() < settled + 5:
            answers.append((time.monotonic(), code))
            await asyncio.sleep(0.05)
        answers.append((time.monotonic(), code))
        assert code == 200, answers
        assert {code for _, code in answers} <= {200, 503}, answers  # never a 500
        assert 503 in {code for _, code in answers}, (seconds, answers)
        assert pipe_of(node).slots.owners[slot_of_call(redis_cluster, node, call_id)] == ("127.0.0.1", promoted.port)
        code, body = await status(node, call_id)
        assert (code, body["state"]) == (200, "ringing")  # the call survived on the replica
    finally:
        if not failover.done():
            await failover
        dead = [n for n in redis_cluster.nodes if not n.alive()]
        for gone in dead:
            await asyncio.to_thread(redis_cluster.restart, gone)


def serve_every_slot(url: str) -> None:
    """A lone cluster node (its plain port) given every slot; until it says it serves them."""
    with redis.Redis.from_url(url) as client:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the node never served its slots"
            time.sleep(0.02)


async def test_the_pipe_reaches_a_cluster_over_tls_with_a_password(
    redis_process: Callable[..., RedisProcess], tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path / "tls")
    port, options = tls_options(certificates)
    # One node that serves every slot: CLUSTER SLOTS names it by its TLS port.
    server = redis_process(
        *options,
        *("--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--tls-cluster", "yes"),
        *("--cluster-config-file", str(tmp_path / "nodes.conf")),
        password="s3cret",
    )
    serve_every_slot(server.url)
    script = "return {KEYS[1], ARGV[1]}"
    sha = hashlib.sha1(script.encode()).hexdigest()

    trusting = ClusterPipe(
        [("127.0.0.1", port)], password="s3cret", timeout=2, tls=ssl.create_default_context(cafile=certificates.ca)
    )
    try:
        assert await trusting.evalsha(sha, script, ["{c:1}:call"], ["x"]) == [b"{c:1}:call", b"x"]
        assert trusting.slots.primaries() == [("127.0.0.1", port)]
    finally:
        trusting.close()

    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    wrong_ca = ssl.create_default_context(cafile=other_ca)
    for refused in (
        ClusterPipe([("127.0.0.1", port)], password="s3cret", timeout=0.5, tls=wrong_ca),
        ClusterPipe([("127.0.0.1", port)], password="s3cret", timeout=0.5),  # plain TCP to a TLS port
    ):
        try:
            with pytest.raises((ConnectionError, TimeoutError)):  # a 503, never the script run
                await refused.evalsha(sha, script, ["{c:1}:call"], ["x"])
        finally:
            refused.close()


# Runs for ARGV[1] seconds of Redis's clock: Redis answers nothing meanwhile.
BUSY = """
local start = redis.call('TIME')
local finish = start[1] * 1000000 + start[2] + ARGV[1] * 1000000
repeat local now = redis.call('TIME') until now[1] * 1000000 + now[2] >= finish
return 1
"""
COUNT = "return redis.call('INCR', KEYS[1])"


async def test_another_requests_timeout_does_not_make_a_script_run_twice(
    redis_process: Callable[..., RedisProcess], tmp_path: Path
) -> None:
    """A reply that waits the whole timeout gives the node's connection up; another request's
    script written on it before may still run (Redis reads it once free): it must not be
    sent again, as in voip/redis_pipe.py."""
    server = redis_process(
        *("--cluster-enabled", "yes", "--cluster-port", str(free_port())),
        *("--cluster-config-file", str(tmp_path / "nodes.conf")),
    )
    serve_every_slot(server.url)
    pipe = ClusterPipe([("127.0.0.1", server.port)], timeout=0.5)
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        await pipe.evalsha(hashlib.sha1(COUNT.encode()).hexdigest(), COUNT, ["{c}:warm"], [])
        await pipe.evalsha(hashlib.sha1(BUSY.encode()).hexdigest(), BUSY, ["{c}:busy"], [0])
        (first_id,) = [c["id"] for c in await client.client_list() if c.get("cmd") == "evalsha"]
        slow = asyncio.create_task(pipe.evalsha(hashlib.sha1(BUSY.encode()).hexdigest(), BUSY, ["{c}:busy"], [0.8]))
        # Not a synchronisation: this request's own deadline must come after the slow one's.
        await asyncio.sleep(0.2)
        other = asyncio.create_task(pipe.evalsha(hashlib.sha1(COUNT.encode()).hexdigest(), COUNT, ["{c}:n"], []))
        with pytest.raises(TimeoutError):
            await slow
        try:
            await other
        except (TimeoutError, ConnectionError):
            pass  # the caller's 503
        while await client.execute_command("CLIENT", "LIST", "ID", first_id):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # Redis tells no one of a client freed
        assert await client.get("{c}:n") == b"1"
    finally:
        pipe.close()
        await client.aclose()
