"""A command whose reply is lost is sent again by redis-py (one reconnect and resend on a
dropped connection, voip/redis_pool.py; the cluster client does the same after a failover),
and by the node's lean pipe, which carries the call path on one Redis (voip/redis_pipe.py:
the same one resend, of the whole batch). The resend must not turn a success into a
refusal: a call created by the first send is the caller's own call, not a taken id (seen as
`call_exists` in the cluster fault test); nor may it do a transition, or write its webhook
event or history record, twice. Each test runs on both connections."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from voip import redis_pool
from voip.calls import Action, CallState
from voip.redis_pipe import RedisPipe
from voip.settings import load_settings
from voip.stores import CallError, CallStore, KeyLayout, Stores


class ReplyDropper:
    """A TCP proxy to Redis that, once armed, forwards the next request that contains
    `marker` and then closes the client's connection instead of passing Redis's reply:
    the command ran, its reply is lost."""

    def __init__(self, upstream: str, marker: bytes) -> None:
        self.upstream = upstream
        self.marker = marker
        self.armed = False
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme == "unix":
            redis_r, redis_w = await asyncio.open_unix_connection(parts.path)
        else:
            redis_r, redis_w = await asyncio.open_connection(parts.hostname, parts.port or 6379)
        drop_next_reply = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.armed and self.marker in data:
                    self.armed = False
                    drop_next_reply.set()
                redis_w.write(data)
                await redis_w.drain()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if drop_next_reply.is_set():
                    self.dropped += 1
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, redis_w):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture(params=["redis-py", "pipe"])
async def dropper(
    redis_url: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[ReplyDropper, Stores]]:
    """The proxy, and the node's stores through it: over redis-py's pool alone, or with the
    lean pipe (the call path's scripts and pipelines on it, as a node on one Redis has it)."""
    if urlsplit(redis_url).path.strip("/") not in ("", "0") and not redis_url.startswith("unix"):
        pytest.fail("the proxy speaks to database 0 only")
    proxy = ReplyDropper(redis_url, b"EVALSHA")
    port = await proxy.start()
    # The node's own pool options: the resend under test is redis-py's, as configured there.
    settings = load_settings(redis_url=f"redis://127.0.0.1:{port}")
    client = Redis(
        connection_pool=BlockingConnectionPool.from_url(settings.redis_url, **redis_pool.pool_options(settings))
    )
    pipe = RedisPipe(settings.redis_url, timeout=settings.redis_command_timeout) if request.param == "pipe" else None
    yield proxy, Stores.open(client, prefix, retention=600, status_pipe=pipe, webhooks_ttl=3600)
    if pipe is not None:
        pipe.close()
    await client.aclose()
    await proxy.aclose()


async def webhook_events(redis: Redis, prefix: str, call_id: str) -> list[str]:
    keys = KeyLayout(prefix)
    return [orjson.loads(event)["type"] for event in await redis.lrange(keys.webhooks(call_id), 0, -1)]


async def history_state(redis: Redis, prefix: str, call_id: str) -> str:
    record = await redis.get(KeyLayout(prefix).history_record(call_id))
    assert record is not None
    return str(orjson.loads(record)["state"])


async def create(calls: CallStore, call_id: str, caller: str = "alice", device: str = "a1") -> bool:
    return await calls.create(
        call_id,
        caller_user=caller,
        caller_device=device,
        callee_user="bob",
        ring_deadline=2**41,
        node="n",
        targets=["b1"],
        created_at=1,
    )


async def test_a_create_whose_reply_was_lost_is_the_callers_own_call(
    dropper: tuple[ReplyDropper, Stores], redis: Redis, prefix: str
) -> None:
    proxy, stores = dropper
    calls = stores.calls
    # The script is loaded first: a NOSCRIPT answer would mean the script never ran.
    assert await create(calls, str(uuid.uuid4()))
    call_id = str(uuid.uuid4())
    proxy.armed = True
    created = await create(calls, call_id)
    assert proxy.dropped == 1, "the reply was not dropped: the test proves nothing"
    assert created
    call = await Stores.open(redis, prefix, retention=600).calls.get(call_id)
    assert call is not None and call.caller_device == "a1"
    # A second create with the same id is still refused: the id is taken.
    assert not await create(calls, call_id, caller="mallory", device="m1")
    timeline = await calls.timeline(call_id)
    assert [e["event"] for e in timeline] == ["created"]
    assert await webhook_events(redis, prefix, call_id) == ["call.created"]
    assert await history_state(redis, prefix, call_id) == "ringing"


async def test_a_transition_whose_reply_was_lost_is_done_once_and_acknowledged(
    dropper: tuple[ReplyDropper, Stores], redis: Redis, prefix: str
) -> None:
    proxy, stores = dropper
    calls = stores.calls

    async def ringing() -> str:
        call_id = str(uuid.uuid4())
        assert await create(calls, call_id)
        return call_id

    # The script is loaded first: a NOSCRIPT answer would mean the script never ran.
    await calls.transition(await ringing(), Action.ANSWER, user="bob", device="b1", node="n")
    call_id = await ringing()
    proxy.armed = True
    transition = await calls.transition(call_id, Action.ANSWER, user="bob", device="b1", node="n")
    assert proxy.dropped == 1, "the reply was not dropped: the test proves nothing"
    assert (transition.previous, transition.call.state) == (CallState.RINGING, CallState.ANSWERED)
    states = [e for e in await calls.timeline(call_id) if e["event"] == "state"]
    assert len(states) == 1
    # Its webhook event and history record written once, by the first send.
    assert await webhook_events(redis, prefix, call_id) == ["call.created", "call.answered"]
    assert await history_state(redis, prefix, call_id) == "answered"
    # Another device's answer is still refused: the resend rule is for the same attempt only.
    with pytest.raises(CallError) as refused:
        await calls.transition(call_id, Action.ANSWER, user="bob", device="b2", node="n")
    assert refused.value.code == "invalid_state"
    hangup = await calls.transition(call_id, Action.HANGUP, user="alice", device="a1", node="n")
    assert (hangup.previous, hangup.call.state.is_final) == (CallState.ANSWERED, True)
