"""The call path over the node's lean pipe (voip/redis_pipe.py) when Redis restarts, stops
answering or runs out of memory, on a redis-server of the test's own: the outcomes are the
ones redis-py's pool gives (a refusal the node answers 503 or `unavailable`, never a
transition done twice), and the pipe serves again once Redis does.
A reply lost to a dropped connection: tests/resilience/test_resent_commands.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from tests.redis_process import RedisProcess
from voip.bus import Bus
from voip.calls import Action, CallState
from voip.redis_pipe import RedisPipe, command
from voip.redis_pool import UNAVAILABLE
from voip.stores import CallStore, Stores

pytestmark = pytest.mark.interop

COMMAND_TIMEOUT = 0.5

# Runs for ARGV[1] seconds of Redis's clock: Redis answers nothing meanwhile.
BUSY = """
local start = redis.call('TIME')
local finish = start[1] * 1000000 + start[2] + ARGV[1] * 1000000
repeat local now = redis.call('TIME') until now[1] * 1000000 + now[2] >= finish
return 1
"""


@pytest.fixture
async def lean(
    redis_process: Callable[..., RedisProcess], prefix: str
) -> AsyncIterator[tuple[RedisProcess, RedisPipe, Stores]]:
    server = redis_process()
    client = aioredis.Redis.from_url(server.url)
    pipe = RedisPipe(server.url, timeout=COMMAND_TIMEOUT)
    yield server, pipe, Stores.open(client, prefix, retention=600, status_pipe=pipe, webhooks_ttl=3600)
    pipe.close()
    await client.aclose()


async def ringing(calls: CallStore) -> str:
    call_id = str(uuid.uuid4())
    created = await calls.create(
        call_id,
        caller_user="alice",
        caller_device="a1",
        callee_user="bob",
        ring_deadline=2**41,
        node="n",
        targets=["b1"],
        created_at=1,
    )
    assert created
    return call_id


async def states(calls: CallStore, call_id: str) -> list[str]:
    return [entry["to"] for entry in await calls.timeline(call_id) if entry["event"] == "state"]


async def test_after_a_redis_restart_the_pipe_connects_again_and_loads_its_scripts(
    lean: tuple[RedisProcess, RedisPipe, Stores],
) -> None:
    server, _, stores = lean
    await stores.calls.transition(await ringing(stores.calls), Action.ANSWER, user="bob", device="b1", node="n")
    server.kill()
    with pytest.raises(UNAVAILABLE):  # refused: the node answers 503, as through redis-py
        await ringing(stores.calls)
    server.start()  # empty, its script cache too
    # The create's batch and the transition's single script: each meets NOSCRIPT once.
    call_id = await ringing(stores.calls)
    answered = await stores.calls.transition(call_id, Action.ANSWER, user="bob", device="b1", node="n")
    assert (answered.previous, answered.call.state) == (CallState.RINGING, CallState.ANSWERED)
    assert await states(stores.calls, call_id) == ["answered"]


async def test_a_redis_that_stops_answering_costs_a_timeout_and_no_resend(
    lean: tuple[RedisProcess, RedisPipe, Stores],
) -> None:
    server, _, stores = lean
    # The script loaded first: a NOSCRIPT answer would mean it never ran.
    await stores.calls.transition(await ringing(stores.calls), Action.ANSWER, user="bob", device="b1", node="n")
    call_id = await ringing(stores.calls)
    server.pause()  # SIGSTOP: the connection stays open, nothing answers
    try:
        with pytest.raises(UNAVAILABLE):
            await stores.calls.transition(call_id, Action.ANSWER, user="bob", device="b1", node="n")
    finally:
        server.resume()
    # Sent once, run once Redis woke: done, and not twice. Its reply, come late, is not
    # taken for the next command's, which goes on the same connection.
    hangup = await stores.calls.transition(call_id, Action.HANGUP, user="bob", device="b1", node="n")
    assert (hangup.previous, hangup.call.state) == (CallState.ANSWERED, CallState.ENDED)
    assert await states(stores.calls, call_id) == ["answered", "ended"]


async def test_a_redis_at_its_maxmemory_refuses_a_call_with_nothing_written(
    lean: tuple[RedisProcess, RedisPipe, Stores], prefix: str
) -> None:
    server, _, stores = lean
    call_id = await ringing(stores.calls)  # the scripts loaded, the connection made
    with server.client() as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) // 2))
        try:
            refused = str(uuid.uuid4())
            with pytest.raises(OutOfMemoryError):  # in UNAVAILABLE: 503, `unavailable`
                await stores.calls.create(
                    refused,
                    caller_user="alice",
                    caller_device="a1",
                    callee_user="bob",
                    ring_deadline=2**41,
                    node="n",
                    targets=["b1"],
                    created_at=1,
                )
            with pytest.raises(OutOfMemoryError):
                await stores.calls.transition(call_id, Action.ANSWER, user="bob", device="b1", node="n")
            assert admin.keys(f"{prefix}*{refused}*") == []
        finally:
            admin.config_set("maxmemory", "0")
    answered = await stores.calls.transition(call_id, Action.ANSWER, user="bob", device="b1", node="n")
    assert answered.call.state is CallState.ANSWERED
    assert await states(stores.calls, call_id) == ["answered"]


async def test_a_pipe_that_waits_on_a_stopped_redis_lets_other_commands_time_out_alike(
    lean: tuple[RedisProcess, RedisPipe, Stores],
) -> None:
    # Every command in flight on the shared connection gets its own timeout, not a wait
    # behind another's: a stopped Redis costs each request one command timeout.
    server, _, stores = lean
    await ringing(stores.calls)
    server.pause()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await asyncio.gather(*(ringing(stores.calls) for _ in range(20)), return_exceptions=True)
        elapsed = loop.time() - started
    finally:
        server.resume()
    assert all(isinstance(outcome, UNAVAILABLE) for outcome in outcomes), outcomes
    # About one command timeout (a command written on a connection whose reply timed out
    # fails with it, not sent again): not one after another (20 of them).
    assert elapsed < 5 * COMMAND_TIMEOUT, elapsed


class Stall:
    """A TCP proxy to a Redis; `stall()` makes the connections open at that moment pass no
    more replies while staying open, as a connection to a host gone without a reset does."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._open: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def stall(self) -> None:
        for stalled in self._open:
            stalled.set()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        stalled = asyncio.Event()
        self._open.append(stalled)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                redis_w.write(data)
                await redis_w.drain()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if not stalled.is_set():
                    client_w.write(data)
                    await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # the client gone, or Redis
        for task in tasks:
            task.cancel()
        client_w.close()
        redis_w.close()


async def test_a_connection_that_stops_answering_is_given_up_after_one_timeout(
    redis_process: Callable[..., RedisProcess], prefix: str
) -> None:
    # As redis-py closes a connection that timed out: the next command goes on a new one
    # (behind Sentinel: to the master named then), not on a socket that never answers.
    server = redis_process()
    proxy = Stall(server.port)
    pipe = RedisPipe(f"redis://127.0.0.1:{await proxy.start()}", timeout=COMMAND_TIMEOUT)
    key = f"{prefix}counted"
    script = "return redis.call('INCR', KEYS[1])"
    sha = hashlib.sha1(script.encode()).hexdigest()
    try:
        assert await pipe.execute([(command("EVALSHA", sha, 1, key), script)]) == [1]
        proxy.stall()
        with pytest.raises(TimeoutError):
            await pipe.execute([(command("EVALSHA", sha, 1, key), script)])
        # It ran, its reply lost, and was not sent again: the next one is the third.
        assert await pipe.execute([(command("EVALSHA", sha, 1, key), script)]) == [3]
        proxy.stall()
        with pytest.raises(TimeoutError):  # the status endpoint's evalsha alike
            await pipe.evalsha(sha, script, [key], [])
        assert await pipe.evalsha(sha, script, [key], []) == 5
    finally:
        pipe.close()
        await proxy.aclose()


async def _gone(redis: aioredis.Redis, client_id: int) -> None:
    """Until Redis has read to the end of this client's socket and freed it (Redis tells no
    one of a client freed: asked until it is gone)."""
    while await redis.execute_command("CLIENT", "LIST", "ID", client_id):  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def test_another_requests_timeout_does_not_make_a_command_run_twice(
    redis_process: Callable[..., RedisProcess], prefix: str
) -> None:
    """A reply that waits the whole timeout gives the connection up; other requests' commands
    written on it before it may still run (Redis reads them from its socket once free): they
    must not be sent again, as redis-py, where each request has its own connection, does
    not. Over TCP, as a node reaches Redis."""
    server = redis_process()
    client = aioredis.Redis.from_url(server.url)
    pipe = RedisPipe(server.url, timeout=COMMAND_TIMEOUT)
    counter = f"{prefix}counter"
    try:
        (first_id,) = await pipe.execute([(command("CLIENT", "ID"), None)])
        slow = asyncio.create_task(pipe.execute([(command("EVAL", BUSY, 0, 0.8), None)]))
        # Not a synchronisation: this request's own deadline must come after the slow one's.
        await asyncio.sleep(0.2)
        other = asyncio.create_task(pipe.execute([(command("INCR", counter), None)]))
        with pytest.raises(TimeoutError):
            await slow
        try:
            await other
        except (TimeoutError, ConnectionError):
            pass  # no reply in time is the caller's 503; running twice is not
        await _gone(client, first_id)
        assert await client.get(counter) == b"1"
    finally:
        pipe.close()
        await client.aclose()


async def test_a_frame_published_while_another_reply_times_out_reaches_a_device_once(
    redis_process: Callable[..., RedisProcess], prefix: str
) -> None:
    """The call path's case of the above: a frame for a user's devices (the bus's SPUBLISH on
    the lean pipe) written behind a command whose reply times out is published once."""
    server = redis_process()
    client = aioredis.Redis.from_url(server.url)
    pipe = RedisPipe(server.url, timeout=COMMAND_TIMEOUT)
    bus = Bus(client, prefix, pipe=pipe)
    listener = client.pubsub()
    try:
        await listener.ssubscribe(bus.channel("bob"))
        confirmed = await listener.get_message(timeout=5)
        assert confirmed is not None and confirmed["type"] == "ssubscribe", confirmed
        (first_id,) = await pipe.execute([(command("CLIENT", "ID"), None)])
        slow = asyncio.create_task(pipe.execute([(command("EVAL", BUSY, 0, 0.8), None)]))
        # Not a synchronisation: this request's own deadline must come after the slow one's.
        await asyncio.sleep(0.2)
        frame = asyncio.create_task(bus.publish("bob", {"type": "call.incoming"}))
        with pytest.raises(TimeoutError):
            await slow
        try:
            await frame
        except (TimeoutError, ConnectionError):
            pass  # the caller's 503
        await _gone(client, first_id)
        await client.spublish(bus.channel("bob"), b"end")
        heard: list[bytes] = []
        while (message := await listener.get_message(timeout=5)) is not None and message["data"] != b"end":
            heard.append(message["data"])
        assert len(heard) <= 1, heard
    finally:
        await listener.aclose()
        pipe.close()
        await client.aclose()


async def test_requests_that_find_redis_unreachable_each_wait_one_connect_timeout() -> None:
    """A Redis whose host takes connections but never completes them (a listen queue full, a
    host gone without a reset): the requests waiting for the pipe's connection share the
    one attempt in flight, as redis-py's pool connects for each at once, and each gets its
    503 in about one connect timeout, not one after another (the tenth after ten)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]  # the listen queue, full: none accepted
        try:
            for waiting in queued:
                waiting.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    waiting.connect(("127.0.0.1", port))
            pipe = RedisPipe(f"redis://127.0.0.1:{port}", timeout=COMMAND_TIMEOUT)
            loop = asyncio.get_running_loop()
            started = loop.time()
            outcomes = await asyncio.gather(
                *(pipe.execute([(command("PING"), None)]) for _ in range(10)), return_exceptions=True
            )
            elapsed = loop.time() - started
            pipe.close()
        finally:
            for waiting in queued:
                waiting.close()
    assert all(isinstance(outcome, UNAVAILABLE) for outcome in outcomes), outcomes
    # One connect timeout, two for a request whose resend met a second attempt.
    assert elapsed < 4 * COMMAND_TIMEOUT, elapsed
