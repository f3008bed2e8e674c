"""A script queued in a pipeline goes as a bare EVALSHA (voip/stores/layout.py), so a Redis
that lost its script cache (restarted, failed over to a replica that never ran it) must
still admit and create calls: NOSCRIPT, then loaded and run, with the rest of the pipeline."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from voip.stores import Stores
from voip.stores.layout import BUCKETS, KeyLayout, bucket_of

pytestmark = pytest.mark.interop  # its own redis-server: SCRIPT FLUSH must not reach other tests


async def test_admit_and_create_survive_a_flushed_script_cache(redis_process: Any) -> None:
    server = redis_process()
    redis = Redis.from_url(server.url)
    try:
        stores = Stores.open(redis, "t:", retention=60)
        now = int(time.time() * 1000)  # the scripts set absolute expiries
        await redis.hset("t:{u:bob}:devices", "ipad", b'{"voip_token": "x"}')
        for n in range(2):
            await redis.script_flush()
            devices, online = await stores.limits.admit(
                f"call-{n}", "bob", now=now, ring_deadline=now + 60000, max_ringing=3, per_minute=20, reach=True
            )
            assert set(devices) == {"ipad"} and online == set()
            assert await redis.zrange("t:{u:bob}:ringing", 0, -1) == [f"call-{i}".encode() for i in range(n + 1)]
            await redis.script_flush()
            created = await stores.calls.create(
                f"call-{n}",
                caller_user="alice",
                caller_device="phone",
                callee_user="bob",
                ring_deadline=now + 60000,
                node="n1",
                targets=["ipad"],
                created_at=now,
            )
            assert created
            assert (await stores.calls.get(f"call-{n}")) is not None
            assert await redis.zscore(KeyLayout("t:").ring_deadlines(f"call-{n}"), f"call-{n}") == now + 60000
        # With the scripts cached again: one id, one call.
        assert not await stores.calls.create(
            "call-0",
            caller_user="alice",
            caller_device="phone",
            callee_user="bob",
            ring_deadline=now + 90000,
            node="n1",
            targets=["ipad"],
            created_at=now + 1000,
        )
        assert await redis.zscore(KeyLayout("t:").ring_deadlines("call-0"), "call-0") == now + 60000
    finally:
        await redis.aclose()


async def test_presence_renewal_and_a_cancellation_record_survive_a_flushed_script_cache(
    redis_process: Any,
) -> None:
    server = redis_process()
    redis = Redis.from_url(server.url)
    try:
        stores = Stores.open(redis, "t:", retention=60)
        await redis.script_flush()
        await stores.presence.renew({"bob": ["ipad", "iphone"], "carol": ["desk"]}, "n1", 10_000)
        assert set(await redis.hkeys("t:{u:bob}:presence")) == {b"ipad", b"iphone"}
        assert await redis.hget("t:{u:carol}:presence", "desk") is not None

        await redis.script_flush()
        entry = {"at": 1, "event": "push", "kind": "cancel", "device": "ipad"}
        await stores.push_log.record_answer("call-1", entry, cancelled=("ipad", 1234))
        assert await redis.hget("t:{c:call-1}:cancellations", "ipad") == b"1234"
        assert len(await stores.calls.timeline("call-1")) == 1  # the entry written once, not again
    finally:
        await redis.aclose()


async def test_a_ticks_ring_claims_survive_a_flushed_script_cache(redis_process: Any) -> None:
    server = redis_process()
    redis = Redis.from_url(server.url)
    try:
        stores = Stores.open(redis, "t:", retention=60)
        keys, now = KeyLayout("t:"), int(time.time() * 1000)
        due = {f"call-{n}": bucket_of(f"call-{n}") for n in range(8)}
        for call_id, bucket in due.items():
            await redis.zadd(keys.ring_bucket(bucket), {call_id: now - 1})
        claimed = await stores.calls.claim_due_timeouts(now, 5000, node="n1", buckets=list(range(BUCKETS)))
        assert sorted(claimed) == sorted(due)
        await redis.script_flush()
        await redis.zadd(keys.ring_deadlines("late"), {"late": now - 1})
        # Every claim in the pipeline answered NOSCRIPT: each runs again, loaded, once.
        claimed = await stores.calls.claim_due_timeouts(now, 5000, node="n1", buckets=list(range(BUCKETS)))
        assert claimed == ["late"]
    finally:
        await redis.aclose()
