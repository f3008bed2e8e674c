"""The live feed: a call on one node reaches operators on another; slow operators are
dropped without holding up the others; nobody watching costs no subscription."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from tests.conftest import RunningNode
from tests.ops.conftest import operator, place_call
from voip.ops.feed import OpsFeed

pytestmark = pytest.mark.on_cluster_too


async def watch(node: RunningNode, **connect: Any) -> Any:
    url = node.base_url.replace("http://", "ws://") + "/v1/ops/live"
    socket = await websockets.connect(url, additional_headers=operator(node), **connect)
    hello = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
    assert hello["type"] == "hello" and hello["node"] == node.node.node_id
    return socket


async def entries_until(socket: Any, done: Any, timeout: float = 5) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not seen or not done(seen):
        frame = orjson.loads(await asyncio.wait_for(socket.recv(), timeout))
        assert frame["type"] == "entry"
        seen.append(frame)
    return seen


async def test_a_call_on_node_a_shows_up_live_on_node_b(node_factory: Any) -> None:
    node_a, node_b = await node_factory(), await node_factory()
    on_b = await watch(node_b)
    by_token = await websockets.connect(
        node_b.base_url.replace("http://", "ws://")
        + f"/v1/ops/live?access_token={node_b.auth.mint('ops-bob', 'operator')}"
    )
    assert orjson.loads(await by_token.recv())["type"] == "hello"
    try:
        caller = await node_a.device("alice", "a1")
        callee = await node_a.device("bob", "b1")
        call_id = await place_call(caller, "bob")
        await callee.expect("call.incoming", call_id=call_id)
        await callee.request({"type": "call.answer", "call_id": call_id})

        def answered(frames: list[dict[str, Any]]) -> bool:
            return any(f["entry"].get("to") == "answered" for f in frames)

        for socket in (on_b, by_token):
            frames = await entries_until(socket, answered)
            assert {f["call_id"] for f in frames} == {call_id}
            created = frames[0]["entry"]
            assert created["event"] == "created" and created["node"] == node_a.node.node_id
            assert created["caller"] == "alice" and created["targets"] == ["b1"]
    finally:
        await on_b.close()
        await by_token.close()
    # The last operator gone, node B no longer listens to the ops channel.
    for _ in range(50):
        if node_b.node.ops_feed.watchers == 0:
            break
        await asyncio.sleep(0.02)
    assert node_b.node.ops_feed.watchers == 0


async def test_a_slow_operator_is_dropped_and_the_others_get_everything(redis: aioredis.Redis, prefix: str) -> None:
    channel = f"{prefix}ops"
    feed = OpsFeed(redis, channel, queue_limit=8)
    slow, fast = await feed.join(), await feed.join()
    received: list[str | None] = []
    for n in range(50):  # the fast operator reads each entry; the slow one never reads
        await redis.publish(channel, orjson.dumps({"call_id": f"c{n}", "entry": {"at": n, "event": "x"}}))
        received.append(await asyncio.wait_for(fast.queue.get(), 5))
    assert [orjson.loads(f or "")["call_id"] for f in received] == [f"c{n}" for n in range(50)]
    assert orjson.loads(received[0] or "") == {"type": "entry", "call_id": "c0", "entry": {"at": 0, "event": "x"}}
    assert slow.dropped and slow.queue.qsize() == 1 and slow.queue.get_nowait() is None
    await feed.leave(slow)
    await feed.leave(fast)
    assert feed.watchers == 0
    assert await redis.pubsub_numsub(channel) == [(channel.encode(), 0)]
