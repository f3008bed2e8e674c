"""Redis Sentinel: a real master, a replica and three Sentinels; the master is killed
(SIGKILL) while calls ring, and every connection of a node follows it to the new master."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from redis.exceptions import ReadOnlyError

from tests.conftest import RunningNode, make_settings, start_node
from tests.ports import free_port
from tests.resilience.test_redis_down import put_devices
from tests.sentinel import SentinelRedis, _Server
from voip import logs
from voip.redis_pipe import Packed, RedisPipe, command
from voip.settings import SettingsError, load_settings

pytestmark = pytest.mark.interop

RING_TIMEOUT = 12.0  # long enough to ring through a failover (about 2.3 s here)


@pytest.fixture(autouse=True)
def _json_logs() -> Iterator[None]:
    # As `python -m voip run` logs. structlog's development renderer formats each
    # traceback with rich, and with Redis failing over that blocked the event loop for
    # seconds: the outage measured would have been the renderer's.
    root = logging.getLogger()
    saved, config = (root.handlers[:], root.level), structlog.get_config()
    logs.configure("info")
    # Loggers cached under this configuration would keep it after the test, and later
    # tests' capture_logs would not see their lines.
    structlog.configure(cache_logger_on_first_use=False)
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = saved[0], saved[1]


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelRedis]:
    with SentinelRedis(down_after_ms=1000) as redis_set:
        yield redis_set


@pytest.fixture
async def sentinel_nodes(sentinel_set: SentinelRedis) -> AsyncIterator[list[RunningNode]]:
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    nodes: list[RunningNode] = []
    for name in ("node-a", "node-b"):
        settings = make_settings("", prefix, node_id=name, ring_timeout=RING_TIMEOUT, **sentinel_set.settings())
        nodes.append(await start_node(settings))
    yield nodes
    for running in nodes:
        if not running.task.done():
            await running.stop()


class Outage:
    """Probes one path every 50 ms; `back_at` is the first success after the last failure."""

    def __init__(self, name: str, probe: Any) -> None:
        self.name, self._probe = name, probe
        self.failures: list[str] = []
        self.log: list[tuple[float, float, bool, str]] = []
        self.first_failure: float | None = None
        self.back_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                ok = await self._probe()
            except Exception as exc:
                ok, reason = False, type(exc).__name__
            else:
                reason = "" if ok else "bad answer"
            self.log.append((began, time.monotonic(), ok, reason))
            if ok:
                if self.first_failure is not None and self.back_at is None:
                    self.back_at = began
            else:
                self.failures.append(reason)
                self.back_at = None
                if self.first_failure is None:
                    self.first_failure = began
            await asyncio.sleep(0.05)

    async def until_back(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.first_failure is None or self.back_at is None:
            assert loop.time() < deadline, f"{self.name}: not back within {timeout}s ({self.log[-40:]})"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_calls_ringing_through_a_failover_answer_cancel_and_time_out(
    sentinel_set: SentinelRedis, sentinel_nodes: list[RunningNode]
) -> None:
    node_a, node_b = sentinel_nodes
    caller = await node_a.device("alice", "a1")
    callees = {user: await node_b.device(user, f"{user}-1") for user in ("bob", "carol", "dave")}
    calls: dict[str, str] = {}
    deadlines: dict[str, float] = {}
    for user, phone in callees.items():
        started = await caller.request({"type": "call.start", "callee": user})
        assert started["type"] == "call.started", started
        calls[user] = started["call_id"]
        deadlines[user] = time.time() + RING_TIMEOUT
        await phone.expect("call.incoming", call_id=calls[user])
    # What the doc promises to keep: writes the replica has. Here, all of them.
    assert await asyncio.to_thread(sentinel_set.wait_replicated) == 1

    status_client, devices_client = node_a.http(), node_b.http()
    bob_bearer = {"Authorization": f"Bearer {node_a.auth.mint('bob', 'device')}"}

    async def status_answers() -> bool:  # the hand-written pipe
        response = await status_client.get(f"/v1/calls/{calls['bob']}/status", headers=bob_bearer, timeout=2)
        return response.status_code == 200

    async def registration_works() -> bool:  # the redis-py pool
        response = await devices_client.put(
            "/v1/devices/probe-1",
            headers=bob_bearer,
            timeout=2,
            json={"voip_token": uuid.uuid4().hex * 2, "apns_environment": "sandbox"},
        )
        return response.status_code in (200, 201)

    # Both buses subscribe again on the new master; frames published before that are lost
    # (docs/deploy.md#redis-sentinel), so the calls go on once the new master counts them.
    channels = [node_a.node.bus.channel(user) for user in ("alice", *callees)]

    async def bus_subscribed() -> bool:  # asked of whichever master the Sentinels name now
        subscribers = dict(await node_a.node.connections.client.pubsub_shardnumsub(*channels))
        return all(subscribers[channel.encode()] >= 1 for channel in channels)

    outages = [
        Outage("status endpoint", status_answers),
        Outage("device registration", registration_works),
        Outage("bus subscriptions", bus_subscribed),
    ]
    for outage in outages:
        outage.start()
    await asyncio.sleep(0.2)
    killed_at = time.monotonic()
    promoted_after = await asyncio.to_thread(sentinel_set.failover)  # SIGKILL the master
    try:
        for outage in outages:
            await outage.until_back(timeout=15)
    finally:
        for outage in outages:
            await outage.stop()
    down_after = sentinel_set.down_after_ms / 1000
    for outage in outages:
        assert outage.first_failure is not None and outage.back_at is not None
        unavailable = outage.back_at - killed_at
        print(
            f"{outage.name}: unavailable {unavailable:.2f}s (Sentinels promoted after {promoted_after:.2f}s; "
            f"down-after {down_after:.1f}s; {len(outage.failures)} failed probes)"
        )
        # Our part of the outage: the time to follow the Sentinels to the new master.
        assert unavailable - promoted_after < 2.0, f"{outage.name} followed the new master too slowly"

    # Answer (bob, on node B; the caller hears it on node A across the bus).
    answered = await callees["bob"].request({"type": "call.answer", "call_id": calls["bob"], "sdp": "v=0"})
    assert answered["type"] == "ack", answered
    assert (await caller.expect("call.answered", call_id=calls["bob"], timeout=5))["device_id"] == "bob-1"
    # Cancel (the caller hangs up; carol, on node B, is told across the bus).
    hung_up = await caller.request({"type": "call.hangup", "call_id": calls["carol"]})
    assert hung_up["type"] == "ack", hung_up
    cancelled = await callees["carol"].expect("call.cancelled", call_id=calls["carol"], timeout=5)
    assert cancelled["reason"] == "remote_ended"
    # A new call across nodes after the failover: B's subscriptions are on the new master.
    erin = await node_b.device("erin", "erin-1")
    new_call = (await caller.request({"type": "call.start", "callee": "erin"}))["call_id"]
    await erin.expect("call.incoming", call_id=new_call, timeout=5)
    # Time out (dave never answers): missed once, at its deadline.
    missed = await callees["dave"].expect("call.missed", call_id=calls["dave"], timeout=RING_TIMEOUT + 5)
    assert missed["reason"] == "unanswered"
    assert time.time() < deadlines["dave"] + 5, "the ring timeout fired late"
    await caller.expect("call.missed", call_id=calls["dave"], timeout=5)

    # The status endpoint tells each call's final truth from the new master.
    truths = {"bob": "answered", "carol": "cancelled", "dave": "missed"}
    for user, state in truths.items():
        headers = {"Authorization": f"Bearer {node_a.auth.mint(user, 'device')}"}
        response = await status_client.get(f"/v1/calls/{calls[user]}/status", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == state, (user, response.json())


async def test_call_creation_waits_for_a_replica_when_asked(sentinel_set: SentinelRedis) -> None:
    # VOIP_REDIS_WAIT_REPLICAS=1: the pipeline that creates the call ends with WAIT 1,
    # so once the caller hears `call.started` the replica has the call.
    assert await asyncio.to_thread(sentinel_set.wait_replicated) == 1  # a replica that keeps up
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    settings = make_settings("", prefix, redis_wait_replicas=1, redis_wait_timeout_ms=500, **sentinel_set.settings())
    node = await start_node(settings)
    try:
        caller = await node.device("alice", "a1")
        await node.device("bob", "b1")
        call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
        replica = next(s for s in sentinel_set.data if s.port != sentinel_set.master_port())
        key = node.node.stores.keys.call(call_id)
        assert await asyncio.to_thread(replica.client.hget, key, "state") == b"ringing"
    finally:
        await node.stop()


async def test_a_busy_sentinel_pool_waits_for_a_connection(sentinel_set: SentinelRedis) -> None:
    # Three connections (one is the bus's) for 100 requests at once, each allowed to wait
    # 10 s: every request gets its turn, none is refused for want of a connection.
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    settings = make_settings("", prefix, redis_pool_size=3, redis_pool_timeout=10, **sentinel_set.settings())
    node = await start_node(settings)
    try:
        responses = await put_devices(node.base_url, [f"busy-{i}" for i in range(100)])
    finally:
        await node.stop()
    assert Counter(r.status_code for r in responses) == {201: 100}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis_sentinels": "127.0.0.1:26379"}, "REDIS_SENTINELS, REDIS_SENTINEL_MASTER: both or neither"),
        ({"redis_sentinel_master": "voip"}, "REDIS_SENTINELS, REDIS_SENTINEL_MASTER: both or neither"),
        (
            {"redis_sentinels": "127.0.0.1:26379,sentinel-b", "redis_sentinel_master": "voip"},
            "REDIS_SENTINELS: not host:port: 'sentinel-b'",
        ),
        ({"redis_sentinels": "h:0", "redis_sentinel_master": "voip"}, "REDIS_SENTINELS: not host:port: 'h:0'"),
    ],
)
def test_sentinel_settings_are_checked(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(**overrides)
    assert str(error.value) == message


def test_redis_password_is_never_shown() -> None:
    settings = load_settings(redis_password="s3cret-redis-pass")
    assert "s3cret-redis-pass" not in repr(settings)


@pytest.fixture
def two_masters() -> Iterator[list[Any]]:
    launcher = SentinelRedis(replicas=0, sentinels=0)
    servers = [_Server(free_port()), _Server(free_port())]
    for server in servers:
        launcher._start_data(server, replica_of=None)
        launcher._wait_ping(server, 10)
    launcher.data = servers
    yield servers
    launcher.stop()


async def test_the_status_pipe_leaves_a_master_demoted_under_it(two_masters: list[Any]) -> None:
    old, new = two_masters
    asked: list[int] = []

    async def locate() -> dict[str, Any]:  # what the Sentinels would say: old, then new
        port = old.port if not asked else new.port
        asked.append(port)
        return {"host": "127.0.0.1", "port": port}

    script = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"
    sha = await asyncio.to_thread(old.client.script_load, script)
    pipe = RedisPipe(locate=locate, master_only=True)
    try:
        assert await pipe.evalsha(sha, script, ["k"], ["before"]) == b"before"
        # Demoted without its clients being dropped (as in a partition that heals):
        # the pipe's connection now answers READONLY to every write.
        await asyncio.to_thread(old.client.execute_command, "REPLICAOF", "127.0.0.1", str(new.port))
        assert await pipe.evalsha(sha, script, ["k"], ["after"]) == b"after"
        assert asked == [old.port, new.port]
        assert await asyncio.to_thread(new.client.get, "k") == b"after"
    finally:
        pipe.close()


async def test_the_status_pipe_refuses_a_replica_named_as_master(two_masters: list[Any]) -> None:
    replica, master = two_masters
    await asyncio.to_thread(replica.client.execute_command, "REPLICAOF", "127.0.0.1", str(master.port))
    answers = [replica.port, master.port]  # a Sentinel's answer gone stale, then the truth

    async def locate() -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": answers.pop(0)}

    script = "return redis.call('SET', KEYS[1], ARGV[1])"
    pipe = RedisPipe(locate=locate, master_only=True)
    try:
        sha = hashlib.sha1(script.encode()).hexdigest()
        assert await pipe.evalsha(sha, script, ["k"], ["v"]) == b"OK"  # connected, NOSCRIPT, loaded
        assert answers == []
    finally:
        pipe.close()


async def test_a_call_batch_on_the_pipe_leaves_a_master_demoted_under_it(two_masters: list[Any]) -> None:
    # The call path's batches behind Sentinel (RedisPipe.execute): READONLY from a demoted
    # master is a dropped connection, as redis-py's Sentinel connection takes it: the whole
    # batch goes again, to the master the Sentinels name now.
    old, new = two_masters
    asked: list[int] = []

    async def locate() -> dict[str, Any]:
        port = old.port if not asked else new.port
        asked.append(port)
        return {"host": "127.0.0.1", "port": port}

    script = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"
    sha = hashlib.sha1(script.encode()).hexdigest()

    def writes(value: str) -> list[Packed]:
        return [(command("EVALSHA", sha, 1, "k", value), script), (command("RPUSH", "written", value), None)]

    pipe = RedisPipe(locate=locate, master_only=True)
    try:
        assert await pipe.execute(writes("before")) == [b"before", 1]
        await asyncio.to_thread(old.client.execute_command, "REPLICAOF", "127.0.0.1", str(new.port))
        assert await pipe.execute(writes("after")) == [b"after", 1]
        assert asked == [old.port, new.port]
        assert await asyncio.to_thread(new.client.lrange, "written", 0, -1) == [b"after"]
    finally:
        pipe.close()


async def test_a_pipe_to_a_replica_named_by_its_url_gets_read_only_as_redis_py_does(two_masters: list[Any]) -> None:
    # No Sentinel to ask for another: READONLY is redis-py's ReadOnlyError (a 503), in place.
    replica, master = two_masters
    await asyncio.to_thread(replica.client.execute_command, "REPLICAOF", "127.0.0.1", str(master.port))
    pipe = RedisPipe(f"redis://127.0.0.1:{replica.port}")
    try:
        (refused,) = await pipe.execute([(command("SET", "k", "v"), None)])
        assert isinstance(refused, ReadOnlyError)
    finally:
        pipe.close()


async def test_an_ending_published_while_the_bus_was_away_is_told_once_it_is_back(node_factory: Any) -> None:
    # The gap a failover leaves, made on purpose: node B's subscriptions are gone while
    # the caller hangs up on node A, so the frame reaches no one on B. Once B's bus is
    # subscribed again it tells its devices how the calls they were rung for ended.
    from voip.tasks import stop_task

    node_a = await node_factory(node_id="node-a")
    node_b = await node_factory(node_id="node-b")
    caller = await node_a.device("alice", "a1")
    phone = await node_b.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)

    bus = node_b.node.bus
    await stop_task(bus._reader)
    assert bus._pubsub.connection is not None
    await bus._pubsub.connection.disconnect()  # as a dead master leaves it
    gap_began = int(time.time() * 1000)
    assert (await caller.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    await phone.silent(0.3)  # published into the gap: lost

    bus._gap_since = gap_began  # what the reader records when its connection fails
    bus._reader = asyncio.create_task(bus._read())
    told = await phone.expect("call.cancelled", call_id=call_id, timeout=5)
    assert told["reason"] == "remote_ended" and told["state"] == "cancelled"
