"""Issue 9, item 6, inside one process: what a draining node still serves and what it
refuses, the SIP transactions it waits for, and the ring-timeout leases it hands back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import websockets

from sip.dialog import Dialog
from tests.conftest import DeviceClient, RunningNode
from tests.sipcalls.conftest import APP_SDP, SipNodeFactory, sip_node, sip_port  # noqa: F401 (fixture)
from tests.sipcalls.uac import build, send, sip_client
from voip.clock import SYSTEM_CLOCK, now_ms
from voip.controller import RingTimeouts
from voip.stores import CallStore


async def _closed_with(device: DeviceClient, timeout: float = 10) -> int:
    try:
        frame = await asyncio.wait_for(device.socket.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code
    raise AssertionError(f"{device.device}: a frame instead of the close: {frame}")


async def test_a_draining_node_refuses_new_work_serves_dialogs_and_waits_for_transactions(
    sip_node: SipNodeFactory,
) -> None:
    node = await sip_node(drain_seconds=20)
    port = sip_port(node)
    alice = await node.device("alice", "alice-phone")
    carol = await node.device("carol", "carol-phone")
    http = node.http()
    async with sip_client() as client:
        # A call in progress: its BYE must still be served while the node drains.
        invite = build("INVITE", "sip:alice@voip.test", contact=str(client.contact()))
        answering = client.send_request(invite, ("127.0.0.1", port), "UDP")
        incoming = await alice.expect("call.incoming")
        await alice.request({"type": "call.answer", "call_id": incoming["call_id"], "sdp": APP_SDP})
        ok = await answering
        assert ok.status == 200
        dialog = Dialog.uac(invite, ok)
        client.send_ack(dialog.create_ack(invite), ("127.0.0.1", port), "UDP")
        # A call still ringing: its INVITE transaction is in flight, and the drain waits for it.
        ringing_invite = build("INVITE", "sip:carol@voip.test", contact=str(client.contact()))
        ringing = client.send_request(ringing_invite, ("127.0.0.1", port), "UDP")
        ringing_call = await carol.expect("call.incoming")

        drain = asyncio.create_task(node.node.drain())
        await asyncio.sleep(0)
        assert node.node.draining

        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await node.device("alice", "alice-tablet")
        assert refused.value.response.status_code == 503
        for method, uri in (("REGISTER", "sip:voip.test"), ("INVITE", "sip:alice@voip.test")):
            request = build(method, uri, user="alice", to="sip:alice@voip.test", contact=str(client.contact()))
            answer = await send(client, port, request)
            assert answer.status == 503, method
            assert str(answer.headers.get("Retry-After")) == "5", method

        bye = dialog.create_request("BYE")
        assert (await client.send_request(bye, ("127.0.0.1", port), "UDP")).status == 200
        ended = await alice.expect("call.ended", call_id=incoming["call_id"])
        assert ended["reason"] == "remote_ended"

        await asyncio.sleep(0.5)
        assert not drain.done(), "the drain did not wait for the INVITE transaction in flight"
        assert node.node.sip is not None and node.node.sip.endpoint.transactions_in_flight() >= 1
        await carol.request({"type": "call.decline", "call_id": ringing_call["call_id"]})
        assert (await ringing).status == 603
        declined = time.monotonic()
        await asyncio.wait_for(drain, 10)
        assert time.monotonic() - declined < 5  # the drain ended with the transaction, not at 20 s

    for device in (alice, carol):
        await device.expect("reconnect", reason="draining")
        assert await _closed_with(device) == 1012


class _StuckFiring:
    """Claims ring timeouts like any node, then hangs while firing one: a node that
    holds leases when it stops."""

    def __init__(self, calls: CallStore) -> None:
        self.calls = calls
        self.node = "stuck-node"  # holds its ring-deadline buckets' leases under this name
        self.claimed = asyncio.Event()

    async def fire_timeout(self, call_id: str) -> None:
        self.claimed.set()
        await asyncio.Event().wait()


async def test_ring_timeout_leases_are_handed_back_when_a_node_stops_firing(node_factory: Any) -> None:
    draining: RunningNode = await node_factory(ring_timeout=1)
    other: RunningNode = await node_factory()
    await other.node.timeouts.stop()  # until the draining node has leased the timeout
    await draining.node.timeouts.stop()
    bob = await other.device("bob", "b-phone")
    caller = await draining.device("alice", "a1")
    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id, deadline = started["call_id"], started["ring_deadline"]
    await bob.expect("call.incoming", call_id=call_id)

    stuck = _StuckFiring(draining.node.stores.calls)
    holder = RingTimeouts(stuck, clock=SYSTEM_CLOCK, interval=0.05)  # type: ignore[arg-type]
    holder.start()
    await asyncio.wait_for(stuck.claimed.wait(), 10)
    stores = draining.node.stores
    leased_until = await draining.node.connections.client.zscore(stores.keys.ring_deadlines(call_id), call_id)
    assert leased_until is not None and leased_until > now_ms() + 3000  # a 5 s lease

    other.node.timeouts.start()
    released = now_ms()
    await holder.stop()
    missed = await bob.expect("call.missed", timeout=10, call_id=call_id)
    # Fired by the other node as soon as the lease was handed back, not 5 s later.
    assert missed["ended_at"] - released < 2000, missed["ended_at"] - released
    assert missed["ended_at"] >= deadline
    timeline = await stores.calls.timeline(call_id)
    [missing] = [e for e in timeline if e["event"] == "state" and e.get("to") == "missed"]
    assert missing["node"] == other.node.node_id
