"""The node's lean Redis connection (the status endpoint's script, the call path's scripts and
pipelines): pipelining, NOSCRIPT, a dropped socket, replies as redis-py gives them."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Connection, Redis
from redis.exceptions import ResponseError

from voip.redis_pipe import RedisPipe, command
from voip.stores.layout import KeyLayout, batch, load_script

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


async def test_a_batch_gets_every_reply_in_order_and_an_error_in_its_place(redis_url: str, prefix: str) -> None:
    pipe = RedisPipe(redis_url)
    bad = "return redis.call('NOPE')"
    try:
        replies = await pipe.execute(
            [
                (command("SET", f"{prefix}b", "1"), None),
                (command("EVALSHA", hashlib.sha1(bad.encode()).hexdigest(), 0), bad),
                (command("INCR", f"{prefix}b"), None),
                (command("EVALSHA", SHA, 1, "k", "v"), SCRIPT),
            ]
        )
        assert replies[0] == b"OK"
        assert isinstance(replies[1], ResponseError)  # redis-py's class, as its pipeline gives
        assert replies[2:] == [2, [b"k", b"v"]]
    finally:
        pipe.close()


async def test_a_batch_whose_script_was_flushed_runs_it_after_the_rest(
    redis_url: str, redis: Redis, prefix: str
) -> None:
    # As batch() through redis-py: the commands after it ran; the script, loaded, runs then.
    script = "return redis.call('RPUSH', KEYS[1], ARGV[1])"
    sha = hashlib.sha1(script.encode()).hexdigest()
    pipe = RedisPipe(redis_url)
    try:
        await redis.script_flush()
        key = f"{prefix}order"
        replies = await pipe.execute(
            [(command("EVALSHA", sha, 1, key, "script"), script), (command("RPUSH", key, "after"), None)]
        )
        assert replies == [2, 1]
        assert await redis.lrange(key, 0, -1) == [b"after", b"script"]
    finally:
        pipe.close()


async def test_batch_over_the_pipe_reads_replies_as_redis_py_does(redis_url: str, redis: Redis, prefix: str) -> None:
    script = load_script(redis, "last_push")
    keys = KeyLayout(prefix)

    def queue(pipe: Any) -> None:
        pipe.hset(f"{prefix}h", mapping={"a": "1", "b": "2"})
        pipe.hgetall(f"{prefix}h")
        pipe.hgetall(f"{prefix}none")
        pipe.hsetnx(f"{prefix}h", "a", "x")
        pipe.zadd(f"{prefix}z", {"m": 5}, nx=True)
        pipe.zremrangebyscore(f"{prefix}z", "-inf", 1)
        pipe.pexpireat(f"{prefix}z", 2**41, gt=True)
        pipe.pexpireat(f"{prefix}z", 2**41, nx=True)
        pipe.expire(f"{prefix}h", 60)
        pipe.get(f"{prefix}missing")
        pipe.spublish(f"{prefix}channel", b"frame")

    pipe = RedisPipe(redis_url)
    try:
        scripts = [(script, [keys.last_push("u")], ["d", b'{"at": 1}'])]
        lean = await batch(redis, scripts, queue, pipe=pipe)
        await redis.delete(f"{prefix}h", f"{prefix}z", keys.last_push("u"))
        assert lean == await batch(redis, scripts, queue)
        assert lean[2] == {b"a": b"1", b"b": b"2"} and lean[3] == {}
    finally:
        pipe.close()


def test_commands_are_written_as_redis_py_writes_them() -> None:
    parts = ("EVALSHA", SHA, 2, "k", "ключ", b'{"a":1}', 12345678901234, -3, 0.1, 1e20, "")
    assert command(*parts) == b"".join(Connection().pack_command(*parts))


# Runs for ARGV[1] seconds of Redis's clock: Redis answers nothing meanwhile.
BUSY = """
local start = redis.call('TIME')
local finish = start[1] * 1000000 + start[2] + ARGV[1] * 1000000
repeat local now = redis.call('TIME') until now[1] * 1000000 + now[2] >= finish
return 1
"""


async def test_a_cancelled_request_leaves_the_next_its_own_reply(redis_url: str, prefix: str) -> None:
    """A handler cancelled while its command is out (its WebSocket closed): its reply, when it
    comes, is read and dropped, and the next command gets its own."""
    pipe = RedisPipe(redis_url, timeout=5)
    try:
        await pipe.execute([(command("PING"), None)])
        slow = asyncio.create_task(pipe.execute([(command("EVAL", BUSY, 0, 0.2), None), (command("ECHO", "a"), None)]))
        single = asyncio.create_task(pipe.evalsha(SHA, SCRIPT, ["k"], ["cancelled"]))
        await asyncio.sleep(0)  # both written in this turn
        slow.cancel()
        single.cancel()
        assert await pipe.execute([(command("ECHO", "mine"), None)]) == [b"mine"]
        assert await pipe.evalsha(SHA, SCRIPT, ["k"], ["mine"]) == [b"k", b"mine"]
        for task in (slow, single):
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        pipe.close()


async def test_a_pipe_closed_while_the_master_is_looked_up_never_connects(tmp_path: Path) -> None:
    """The node stops while a request waits for the pipe's connection, Sentinel being asked
    for the master: the request fails, and the pipe opens no connection to the address it
    then learns (a connection made only to be closed costs Redis a client)."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    path = str(tmp_path / "redis.sock")
    server = await asyncio.start_unix_server(accept, path)
    asked, answer = asyncio.Event(), asyncio.Event()

    async def locate() -> dict[str, Any]:
        asked.set()
        await answer.wait()
        return {"path": path}

    try:
        pipe = RedisPipe(locate=locate, timeout=5)
        waiting = asyncio.create_task(pipe.execute([(command("PING"), None)]))
        await asked.wait()
        pipe.close()
        answer.set()
        with pytest.raises(ConnectionError, match="Redis pipe closed"):
            await waiting
        await asyncio.sleep(0.05)  # a connection made would have been accepted by now
        assert accepted == []
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
