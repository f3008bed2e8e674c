"""The node's pool hands an idle connection over at once when nobody waits, and keeps
redis-py's queue when someone does: a waiter is served before a later request, and a
request that finds every connection busy still gets its 503-bound error in time."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from voip.redis_pool import QuickCheckout


async def test_an_idle_connection_is_handed_over_and_works(redis_url: str) -> None:
    pool = QuickCheckout.from_url(redis_url, max_connections=2, timeout=1)
    client = Redis(connection_pool=pool)
    try:
        assert await client.ping()
        assert len(pool._available_connections) == 1  # made once, back in the pool
        idle = pool._available_connections[0]
        for _ in range(3):
            assert await client.ping()
        assert pool._available_connections == [idle] and not pool._in_use_connections
    finally:
        await client.aclose()


async def test_a_waiting_request_keeps_its_turn(redis_url: str) -> None:
    pool = QuickCheckout.from_url(redis_url, max_connections=1, timeout=5)
    try:
        held = await pool.get_connection()
        order: list[str] = []

        async def take(name: str) -> None:
            connection = await pool.get_connection()
            order.append(name)
            await asyncio.sleep(0.01)
            await pool.release(connection)

        first = asyncio.create_task(take("first"))
        await asyncio.sleep(0.05)  # waiting: the only connection is held
        second = asyncio.create_task(take("second"))
        await asyncio.sleep(0.05)
        await pool.release(held)
        await asyncio.gather(first, second)
        assert order == ["first", "second"]
    finally:
        await pool.aclose()


async def test_a_full_pool_still_refuses_after_its_timeout(redis_url: str) -> None:
    pool = QuickCheckout.from_url(redis_url, max_connections=1, timeout=0.2)
    try:
        held = await pool.get_connection()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await pool.get_connection()
        await pool.release(held)
    finally:
        await pool.aclose()
