"""Limits per callee and per user, against real nodes sharing one real Redis: calls
ringing one callee at once, new calls to one callee per minute (WebSocket and SIP), and
device WebSockets per user. The flood from the issue (2,000 INVITEs in 5 s gave 335
calls and 337 VoIP pushes to one phone) is replayed smaller; the pushes the APNs
simulator receives stay within the cap."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator
from sip.endpoint import ClientTransaction
from tests.conftest import BUNDLE, DeviceClient, RunningNode, register
from tests.sipcalls.conftest import SipNodeFactory, sip_node, sip_port  # noqa: F401 (a fixture)
from tests.sipcalls.uac import build, sip_client

VOIP_TOPIC = f"{BUNDLE}.voip"
Apns = tuple[APNsSimulator, dict[str, str]]


def invite_pushes(sim: APNsSimulator) -> list[str]:
    """Call ids of the invite pushes the simulator accepted."""
    calls = []
    for request in sim.requests:
        if request.status == 200 and request.body:
            payload = orjson.loads(request.body)
            if payload.get("type") == "call.incoming":
                calls.append(payload["call_id"])
    return calls


async def settled_invites(sim: APNsSimulator, expected: int) -> list[str]:
    """The invite pushes once `expected` have arrived and a moment has passed for any
    extra one to show up (an extra one fails the caller's assertion)."""
    for _ in range(250):
        if len(invite_pushes(sim)) >= expected:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    return invite_pushes(sim)


async def start_calls(caller: DeviceClient, callee: str, count: int) -> list[dict[str, Any]]:
    """`count` call.start frames sent at once; the replies, in request order."""
    ids = [f"{caller.device}-{i}" for i in range(count)]
    for request_id in ids:
        await caller.send({"type": "call.start", "id": request_id, "callee": callee})
    replies: dict[str, dict[str, Any]] = {}
    while len(replies) < count:
        frame = await caller.next(timeout=10)
        if frame.get("id") in ids:
            replies[frame["id"]] = frame
        else:
            caller.backlog.append(frame)
    return [replies[i] for i in ids]


@pytest.fixture
async def bob_phone_nodes(node_factory: Any, apns: Apns) -> tuple[RunningNode, RunningNode, APNsSimulator]:
    """Two nodes, one Redis, one APNs simulator; bob has a phone that takes VoIP pushes."""
    sim, settings = apns
    first, second = await node_factory(**settings), await node_factory(**settings)
    await register(first, "bob", "b-phone", voip_token=sim.add_device(VOIP_TOPIC, online=False).token)
    return first, second, sim


async def test_calls_ringing_one_callee_are_capped_across_nodes_and_so_are_the_pushes(
    bob_phone_nodes: tuple[RunningNode, RunningNode, APNsSimulator],
) -> None:
    first, second, sim = bob_phone_nodes
    alice = await first.device("alice", "a-phone")
    carol = await second.device("carol", "c-phone")
    replies = [
        r for batch in await asyncio.gather(start_calls(alice, "bob", 6), start_calls(carol, "bob", 6)) for r in batch
    ]

    started = [r for r in replies if r["type"] == "call.started"]
    refused = [r for r in replies if r["type"] == "error"]
    assert len(started) == 3 and len(refused) == 9  # VOIP_MAX_RINGING_PER_CALLEE's default
    for error in refused:
        assert error["code"] == "call_refused" and error["reason"] == "callee_busy", error
        assert "retry_after" not in error
    assert sorted(await settled_invites(sim, 3)) == sorted(r["call_id"] for r in started)

    # A call that stops ringing makes room for the next one.
    mine = next(r for r in replies if r["type"] == "call.started" and r["id"].startswith("a-phone"))
    assert (await alice.request({"type": "call.hangup", "call_id": mine["call_id"]}))["type"] == "ack"
    again = await alice.request({"type": "call.start", "callee": "bob"})
    assert again["type"] == "call.started"
    assert len(await settled_invites(sim, 4)) == 4


async def test_new_calls_to_one_callee_per_minute_are_capped(node_factory: Any, apns: Apns) -> None:
    sim, settings = apns
    node = await node_factory(**settings, max_ringing_per_callee=100, calls_per_callee_per_minute=4)
    await register(node, "bob", "b-phone", voip_token=sim.add_device(VOIP_TOPIC, online=False).token)
    alice = await node.device("alice", "a-phone")
    for _ in range(4):  # each hung up at once: never more than one rings
        started = await alice.request({"type": "call.start", "callee": "bob"})
        assert started["type"] == "call.started"
        await alice.request({"type": "call.hangup", "call_id": started["call_id"]})
    refused = await alice.request({"type": "call.start", "callee": "bob"})
    assert refused["type"] == "error" and refused["code"] == "call_refused"
    assert refused["reason"] == "rate_limited" and 1 <= refused["retry_after"] <= 60
    assert len(await settled_invites(sim, 4)) == 4
    # Other callees are not held back by bob's count.
    await register(node, "dave", "d-phone", voip_token=sim.add_device(VOIP_TOPIC, online=False).token)
    assert (await alice.request({"type": "call.start", "callee": "dave"}))["type"] == "call.started"


async def sip_flood(node: RunningNode, callee: str, count: int) -> tuple[list[ClientTransaction], list[Any]]:
    """`count` INVITEs to `callee` at once from a trusted address; returns the ones still
    ringing and the final responses of the others."""
    async with sip_client() as client:
        port = sip_port(node)
        transactions = [
            client.send_request(
                build("INVITE", f"sip:{callee}@voip.test", contact=str(client.contact())), ("127.0.0.1", port), "UDP"
            )
            for _ in range(count)
        ]
        waits = {asyncio.ensure_future(tx): tx for tx in transactions}  # type: ignore[arg-type]
        done, pending = await asyncio.wait(waits, timeout=3)
        ringing = [waits[w] for w in pending]
        finals = [w.result() for w in done]
        for tx in ringing:  # leave nothing ringing behind
            tx.cancel()
        await asyncio.wait(pending, timeout=10)
    return ringing, finals


async def test_a_sip_flood_to_one_callee_gets_486_beyond_the_ringing_cap(sip_node: SipNodeFactory, apns: Apns) -> None:
    sim, settings = apns
    node = await sip_node(**settings)
    await register(node, "bob", "b-phone", voip_token=sim.add_device(VOIP_TOPIC, online=False).token)
    ringing, finals = await sip_flood(node, "bob", 12)
    assert len(ringing) == 3
    assert sorted(r.status for r in finals) == [486] * 9
    assert len(await settled_invites(sim, 3)) == 3


async def test_a_sip_flood_to_one_callee_gets_503_retry_after_beyond_the_rate(
    sip_node: SipNodeFactory, apns: Apns
) -> None:
    sim, settings = apns
    node = await sip_node(**settings, max_ringing_per_callee=100, calls_per_callee_per_minute=5)
    await register(node, "bob", "b-phone", voip_token=sim.add_device(VOIP_TOPIC, online=False).token)
    ringing, finals = await sip_flood(node, "bob", 12)
    assert len(ringing) == 5
    assert sorted(r.status for r in finals) == [503] * 7
    for response in finals:
        assert 1 <= int(response.headers.get("Retry-After")) <= 60
    assert len(await settled_invites(sim, 5)) == 5


async def closed_with(client: DeviceClient) -> tuple[int | None, str | None]:
    await asyncio.wait_for(client.socket.wait_closed(), 5)
    return client.socket.close_code, client.socket.close_reason


async def test_the_oldest_socket_beyond_the_users_cap_is_closed_on_whichever_node_holds_it(
    node_factory: Any,
) -> None:
    first = await node_factory(max_devices_per_user=2)
    second = await node_factory(max_devices_per_user=2)
    oldest = await first.device("bob", "b-phone")
    middle = await first.device("bob", "b-tablet")
    await oldest.request({"type": "ping"})
    newest = await second.device("bob", "b-watch")  # the third, on the other node

    assert await closed_with(oldest) == (4008, "too_many_sockets")
    for client in (middle, newest):
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    # Another user's sockets are not counted against bob's.
    for i in range(3):
        alice = await second.device("alice", f"a-{i}")
        assert (await alice.request({"type": "ping"}))["type"] == "pong"

    # A closed socket frees its place: a new one closes nobody.
    await middle.aclose()
    for _ in range(100):
        if await first.node.connections.client.zcard(first.node.stores.keys.sockets("bob")) == 1:
            break
        await asyncio.sleep(0.02)
    replacement = await first.device("bob", "b-laptop")
    for client in (newest, replacement):
        assert (await client.request({"type": "ping"}))["type"] == "pong"
