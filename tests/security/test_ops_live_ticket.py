"""Issue 8, item 4: the live feed's tickets. Only an operator gets one; it opens one socket,
once, on any node; Redis holds its hash, not the ticket, and forgets it after
VOIP_OPS_TICKET_TTL; anything else is refused before the upgrade."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningNode


def live(node: RunningNode, query: str = "") -> str:
    return node.base_url.replace("http://", "ws://") + "/v1/ops/live" + query


async def ticket_for(node: RunningNode, role: str = "operator") -> Any:
    return await node.http().post(
        "/v1/ops/live/ticket", headers={"Authorization": f"Bearer {node.auth.mint('ops-carol', role)}"}
    )


async def refusal(url: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url)
    return refused.value.response.status_code, orjson.loads(refused.value.response.body)


async def test_a_ticket_opens_the_feed_once_on_any_node(node_factory: Any, redis: aioredis.Redis, prefix: str) -> None:
    node_a, node_b = await node_factory(ops_ticket_ttl=20), await node_factory()
    answer = await ticket_for(node_a)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    ticket, expires_in = answer.json()["ticket"], answer.json()["expires_in"]
    assert expires_in == 20 and len(ticket) >= 43

    # Redis holds the hash, bound to the operator, for the ticket's life only.
    key = f"{prefix}ops_ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"
    assert await redis.get(key) == b"ops-carol"
    assert 0 < await redis.ttl(key) <= 20
    async for stored in redis.scan_iter(match=f"{prefix}*"):
        assert ticket.encode() not in stored and ticket.encode() not in (await redis.dump(stored) or b"")

    # Issued by node A, used on node B: one socket, once.
    socket = await websockets.connect(live(node_b, f"?ticket={ticket}"))
    assert orjson.loads(await asyncio.wait_for(socket.recv(), 5))["type"] == "hello"
    await socket.close()
    assert await redis.exists(key) == 0
    for node in (node_a, node_b):
        assert await refusal(live(node, f"?ticket={ticket}")) == (
            401,
            {"error": "unauthorized", "message": "invalid or expired ticket"},
        )


async def test_two_sockets_racing_with_one_ticket_open_one_feed(node: RunningNode) -> None:
    ticket = (await ticket_for(node)).json()["ticket"]

    async def attempt() -> str:
        try:
            socket = await websockets.connect(live(node, f"?ticket={ticket}"))
        except InvalidStatus as refused:
            return str(refused.response.status_code)
        await socket.close()
        return "open"

    assert sorted(await asyncio.gather(*(attempt() for _ in range(8)))) == ["401"] * 7 + ["open"]


async def test_tickets_only_for_operators_and_only_real_ones(node: RunningNode) -> None:
    denied = await ticket_for(node, role="device")
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    anonymous = await node.http().post("/v1/ops/live/ticket")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert (await node.http().get("/v1/ops/live/ticket")).status_code == 405

    for bad in ("", "x", "A" * 43, "%C3%A9" * 10, "A" * 5000):
        status, body = await refusal(live(node, f"?ticket={bad}"))
        assert status == 401 and body["error"] == "unauthorized", bad


async def test_an_expired_ticket_opens_nothing(node_factory: Any) -> None:
    node = await node_factory(ops_ticket_ttl=1)
    answer = (await ticket_for(node)).json()
    assert answer["expires_in"] == 1
    await asyncio.sleep(1.5)  # past VOIP_OPS_TICKET_TTL: Redis has forgotten it
    assert (await refusal(live(node, f"?ticket={answer['ticket']}")))[0] == 401
