"""The status endpoint's own Redis connection: pipelining, NOSCRIPT, a dropped socket."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from voip.redis_pipe import RedisPipe

SCRIPT = "return {KEYS[1], ARGV[1]}"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


async def test_concurrent_requests_each_get_their_own_reply(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    try:
        replies = await asyncio.gather(*(pipe.evalsha(SHA, SCRIPT, [f"k{i}"], [i]) for i in range(500)))
        assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]
    finally:
        pipe.close()


async def test_script_flushed_from_redis_is_loaded_again(redis_url: str, redis: Redis) -> None:
    pipe = RedisPipe(redis_url)
    try:
        assert await pipe.evalsha(SHA, SCRIPT, ["a"], ["1"]) == [b"a", b"1"]
        await redis.script_flush()
        assert await pipe.evalsha(SHA, SCRIPT, ["b"], ["2"]) == [b"b", b"2"]
    finally:
        pipe.close()


async def test_errors_reach_the_caller_and_the_connection_goes_on(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    try:
        bad = "return redis.call('NOPE')"
        with pytest.raises(ResponseError):
            await pipe.evalsha(hashlib.sha1(bad.encode()).hexdigest(), bad, [], [])
        assert await pipe.evalsha(SHA, SCRIPT, ["c"], ["3"]) == [b"c", b"3"]
    finally:
        pipe.close()


async def test_a_killed_connection_is_replaced(redis_url: str, redis: Redis) -> None:
    pipe = RedisPipe(redis_url)
    try:
        await pipe.evalsha(SHA, SCRIPT, ["d"], ["4"])
        # Kill exactly this connection, from the server's side.
        clients = await redis.client_list()
        mine = [c for c in clients if c.get("cmd") == "evalsha" and c["id"] != str(await redis.client_id())]
        assert mine, clients
        for client in mine:
            await redis.client_kill_filter(_id=client["id"])
        await asyncio.sleep(0.05)
        assert await pipe.evalsha(SHA, SCRIPT, ["e"], ["5"]) == [b"e", b"5"]
    finally:
        pipe.close()


def test_works_on_uvloop_as_served_by_uvicorn(redis_url: str) -> None:
    import uvloop

    async def main() -> list[bytes]:
        pipe = RedisPipe(redis_url)
        try:
            return await pipe.evalsha(SHA, SCRIPT, ["u"], ["v"])  # type: ignore[no-any-return]
        finally:
            pipe.close()

    assert uvloop.run(main()) == [b"u", b"v"]
