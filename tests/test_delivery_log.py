"""The node's delivery log (voip/delivery_log.py): "delivered" timeline entries written in
batches, one pipeline per batch; retried while Redis is away; bounded; written on a clean
stop and at the end of a drain. Against real redis-servers: the suite's own, and private ones
that a test kills."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.conftest import RunningNode, make_settings, start_node
from tests.redis_process import RedisProcess
from voip.delivery_log import DeliveryLog
from voip.stores import CallStore, Stores


class RoundTrips:
    """Counts a client's writes, each one round trip (redis-py packs a pipeline into one
    write, then reads every reply), on whichever real connection class its URL asks for."""

    def __init__(self) -> None:
        self.writes = 0

    def client(self, url: str) -> aioredis.Redis:
        pool = aioredis.ConnectionPool.from_url(url)
        base: Any = pool.connection_class
        counter = self

        class Counting(base):  # type: ignore[misc,valid-type]
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                counter.writes += 1
                await super().send_packed_command(command, check_health)

        pool.connection_class = Counting
        return aioredis.Redis(connection_pool=pool)


def entry(n: int, device: str = "b-phone") -> dict[str, Any]:
    return {"at": n, "event": "delivered", "type": "call.incoming", "device": device, "node": "node-t"}


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("voip_delivery_log_dropped_total", {"reason": reason}) or 0.0


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def writes(redis_url: str) -> AsyncIterator[tuple[RoundTrips, aioredis.Redis]]:
    trips = RoundTrips()
    client = trips.client(redis_url)
    yield trips, client
    await client.aclose()


@pytest.fixture
def calls(redis: aioredis.Redis, prefix: str) -> CallStore:
    """The test's reader, on a client of its own."""
    return Stores.open(redis, prefix, retention=600).calls


async def test_a_burst_is_one_round_trip_and_every_entry_lands_in_order_and_on_the_ops_feed(
    writes: tuple[RoundTrips, aioredis.Redis], calls: CallStore, redis: aioredis.Redis, prefix: str
) -> None:
    trips, client = writes
    feed = redis.pubsub()
    await feed.subscribe(Stores.open(redis, prefix, retention=600).keys.ops_channel)
    await feed.get_message(timeout=1)  # the subscription's confirmation
    await client.ping()  # the connection is made before the burst
    log = DeliveryLog(Stores.open(client, prefix, retention=600).calls, flush_entries=12, flush_interval=60)
    log.start()
    try:
        before = trips.writes
        for n in range(12):  # 3 calls, 4 frames each, interleaved as sockets would
            log.record(f"call-{n % 3}", entry(n))
        await until(lambda: _timeline_length(calls, "call-2", 4), "the burst is written")
        assert trips.writes - before == 1
        for c in range(3):
            assert await calls.timeline(f"call-{c}") == [entry(n) for n in range(c, 12, 3)]
        published = []
        while len(published) < 12:
            message = await feed.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None, published
            published.append(message["data"])
        assert published[0] == b'{"call_id":"call-0","entry":{"at":0,"event":"delivered","type":"call.incoming",' \
            b'"device":"b-phone","node":"node-t"}}'
    finally:
        await log.stop()
        await feed.aclose()


async def _timeline_length(calls: CallStore, call_id: str, length: int) -> bool:
    return len(await calls.timeline(call_id)) == length


async def test_a_few_entries_are_written_after_the_interval(calls: CallStore) -> None:
    log = DeliveryLog(calls, flush_entries=1000, flush_interval=0.05)
    log.start()
    try:
        log.record("call-a", entry(1))
        log.record("call-a", entry(2))
        await until(lambda: _timeline_length(calls, "call-a", 2), "written within the interval", timeout=2)
    finally:
        await log.stop()


async def test_a_clean_stop_writes_what_is_queued(calls: CallStore) -> None:
    log = DeliveryLog(calls, flush_entries=1000, flush_interval=60)
    log.start()
    log.record("call-a", entry(1))
    log.record("call-b", entry(2))
    await asyncio.sleep(0)  # the writer is waiting for more, or for its minute
    assert await calls.timeline("call-a") == []
    await log.stop()
    assert await calls.timeline("call-a") == [entry(1)]
    assert await calls.timeline("call-b") == [entry(2)]


@pytest.mark.interop  # a redis-server of its own, killed
async def test_entries_queued_while_redis_is_down_are_written_when_it_returns(
    redis_process: Callable[..., RedisProcess], prefix: str
) -> None:
    server = redis_process()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    calls = Stores.open(client, prefix, retention=600).calls
    log = DeliveryLog(calls, flush_entries=2, flush_interval=0.02, retry_window=30)
    log.start()
    lost_before = dropped("unwritten")
    try:
        server.kill()
        with capture_logs() as logs:
            log.record("call-a", entry(1))
            log.record("call-a", entry(2))
            await until(
                lambda: _async(any(e["event"] == "delivery_log.flush.retrying" for e in logs)),
                "a failed write retried",
            )
            log.record("call-a", entry(3))  # queued behind the batch being retried
        server.start()
        await until(lambda: _timeline_length(calls, "call-a", 3), "every entry written once Redis is back")
        assert await calls.timeline("call-a") == [entry(1), entry(2), entry(3)]
        assert dropped("unwritten") == lost_before
    finally:
        await log.stop()
        await client.aclose()


async def _async(value: bool) -> bool:
    return value


@pytest.mark.interop  # a redis-server of its own, killed
async def test_beyond_the_queue_limit_and_the_retry_window_entries_are_dropped_counted_and_logged_once(
    redis_process: Callable[..., RedisProcess], prefix: str
) -> None:
    server = redis_process()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    calls = Stores.open(client, prefix, retention=600).calls
    log = DeliveryLog(calls, queue_limit=3, retry_window=0.3)  # not started: the test flushes
    full_before, lost_before = dropped("queue_full"), dropped("unwritten")
    try:
        server.kill()
        with capture_logs() as logs:
            for n in range(5):
                log.record("call-a", entry(n))
            assert dropped("queue_full") - full_before == 2
            assert [e["count"] for e in logs if e["event"] == "delivery_log.dropped"] == [1]  # then once per interval
            await log.flush()
        assert dropped("unwritten") - lost_before == 3
        assert [e["entries"] for e in logs if e["event"] == "delivery_log.write_failed"] == [3]
        server.start()
        log.record("call-a", entry(9))
        await log.flush()
        assert await calls.timeline("call-a") == [entry(9)]
    finally:
        await log.stop()
        await client.aclose()


@pytest.fixture
async def slow_flushing_node(redis_url: str, prefix: str) -> AsyncIterator[RunningNode]:
    node = await start_node(make_settings(redis_url, prefix))
    # Nothing is written on a timer during the test: only a full batch, a drain or a stop writes.
    node.node.deliveries.flush_interval = 60
    yield node
    await node.stop()


async def _call_rings(node: RunningNode) -> str:
    caller = await node.device("alice", "a-phone")
    callee = await node.device("bob", "b-phone")
    call_id: str = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await callee.expect("call.incoming", call_id=call_id)
    return call_id


def _delivered(timeline: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["device"]) for e in timeline if e["event"] == "delivered"}


async def test_a_node_stopping_cleanly_writes_its_queued_deliveries(
    slow_flushing_node: RunningNode, redis: aioredis.Redis, prefix: str
) -> None:
    node = slow_flushing_node
    call_id = await _call_rings(node)
    calls = Stores.open(redis, prefix, retention=600).calls
    assert _delivered(await calls.timeline(call_id)) == set()
    await node.stop()
    assert _delivered(await calls.timeline(call_id)) == {("call.started", "a-phone"), ("call.incoming", "b-phone")}


async def test_a_drained_node_has_written_its_deliveries(slow_flushing_node: RunningNode) -> None:
    node = slow_flushing_node
    call_id = await _call_rings(node)
    await node.node.drain()
    assert _delivered(await node.node.stores.calls.timeline(call_id)) >= {
        ("call.started", "a-phone"), ("call.incoming", "b-phone")
    }
