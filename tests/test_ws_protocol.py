"""voip/ws_protocol.py: uvicorn's WebSocket protocol with a list and a future in place of
its queue and its "writable" event. They must behave as the asyncio ones do where the
protocol uses them: order kept, a waiting getter woken, a cancelled getter leaving the
others waiting; and a socket served through the protocol lets its handshake go. The
device socket is served before the router (voip/app.py NodeApp); any other WebSocket path
still meets the router."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets

from tests.conftest import RunningNode
from voip.ws import DeviceConnection
from voip.ws_protocol import LeanFlag, LeanQueue, LeanWebSocketProtocol


async def test_the_queue_hands_out_items_in_order_and_wakes_a_waiting_getter() -> None:
    queue: LeanQueue[int] = LeanQueue()
    assert queue.empty()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert queue.qsize() == 2
    assert [await queue.get(), await queue.get()] == [1, 2]

    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait(3)
    assert await asyncio.wait_for(waiting, 1) == 3
    assert queue.empty()


async def test_a_cancelled_getter_leaves_the_others_waiting_for_the_next_item() -> None:
    queue: LeanQueue[str] = LeanQueue()
    gone = asyncio.create_task(queue.get())
    stays = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    queue.put_nowait("frame")
    assert await asyncio.wait_for(stays, 1) == "frame"


async def test_the_flag_lets_waiters_through_only_while_set() -> None:
    flag = LeanFlag()
    assert not flag.is_set()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    flag.set()
    assert await asyncio.wait_for(waiter, 1) is True
    flag.clear()
    again = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not again.done()
    flag.set()
    await asyncio.wait_for(again, 1)


async def test_a_served_socket_talks_through_the_lean_protocol_and_lets_its_handshake_go(
    node: RunningNode,
) -> None:
    protocols = [p for p in node.server.server_state.connections if isinstance(p, LeanWebSocketProtocol)]
    assert protocols == []
    phone = await node.device("alice", "alice-phone")
    ping = await phone.request({"type": "ping", "id": 7})
    assert ping["type"] == "pong"
    (protocol,) = [p for p in node.server.server_state.connections if isinstance(p, LeanWebSocketProtocol)]
    assert isinstance(protocol.queue, LeanQueue) and isinstance(protocol.writable, LeanFlag)
    assert protocol.request is None and protocol.response is None  # type: ignore[comparison-overlap]
    assert protocol.conn.parser.gi_code.co_name == "parse"  # type: ignore[attr-defined]
    assert protocol.conn.parser.gi_frame.f_locals.get("request") is None  # type: ignore[attr-defined]
    # Frames still parse through the swapped parser (tests/test_bad_input.py: too big ones close 1009).
    assert (await phone.request({"type": "ping", "id": 8}))["type"] == "pong"
    (connection,) = [c for c in node.node.sockets if isinstance(c, DeviceConnection)]
    assert connection.outbox == []
    await phone.aclose()


async def test_a_websocket_on_any_other_path_still_meets_the_router(node: RunningNode) -> None:
    for path in ("/v1/ws/", "/v1/wss", "/healthz"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(node.ws_url.replace("/v1/ws", path))
        assert refused.value.response.status_code == 403  # uvicorn's answer to a route-less close


async def test_a_frame_the_bus_delivers_before_the_accept_waits_and_the_hello_still_comes(
    node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bus is attached before the socket is accepted (voip/ws.py open): a frame can
    # arrive then. Written before the accept, it would fail and end all writing: the app
    # would wait for its hello in vain while the node counted the socket as connected
    # (the chaos run's sleeper, skipped by a cancellation push).
    opened = DeviceConnection.open

    async def open_then_a_frame(self: DeviceConnection, undo: Any) -> None:
        await opened(self, undo)
        await self.deliver({"type": "call.cancelled", "call_id": "early", "reason": "caller_cancelled"})
        await asyncio.sleep(0.05)  # the accept is still to come: any writer would run now

    monkeypatch.setattr(DeviceConnection, "open", open_then_a_frame)
    phone = await node.device("bob", "bob-phone")  # hello, or it times out
    early = await phone.expect("call.cancelled", call_id="early")
    assert early["reason"] == "caller_cancelled"
    assert (await phone.request({"type": "ping"}))["type"] == "pong"
    await phone.aclose()
