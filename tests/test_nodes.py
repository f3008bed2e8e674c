"""Several nodes on one Redis: no call state lives only in one process."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from voip.clock import ManualClock
from voip.node import NodeParts

pytestmark = pytest.mark.on_cluster_too


async def test_caller_and_callee_on_different_nodes(node_factory: Any) -> None:
    node_a = await node_factory(node_id="node-a")
    node_b = await node_factory(node_id="node-b")
    caller = await node_a.device("alice", "a1")
    phone = await node_b.device("bob", "b1")
    ipad = await node_a.device("bob", "b2")

    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    await ipad.expect("call.incoming", call_id=call_id)
    await phone.request({"type": "call.ringing", "call_id": call_id})
    await caller.expect("call.ringing", call_id=call_id, device_id="b1")

    await phone.request({"type": "call.answer", "call_id": call_id, "sdp": "answer"})
    assert (await caller.expect("call.answered", call_id=call_id))["sdp"] == "answer"
    await ipad.expect("call.answered_elsewhere", call_id=call_id)

    await caller.request({"type": "call.signal", "call_id": call_id, "payload": {"ice": 1}})
    assert (await phone.expect("call.signal", call_id=call_id))["payload"] == {"ice": 1}

    await caller.request({"type": "call.hangup", "call_id": call_id})
    await phone.expect("call.ended", call_id=call_id)

    for node in (node_a, node_b):  # "delivered" entries are written in batches
        await node.node.deliveries.flush()
    timeline = await node_a.node.stores.calls.timeline(call_id)
    nodes = {(e["event"], e.get("device"), e["node"]) for e in timeline if e["event"] in ("ringing", "delivered")}
    assert ("ringing", "b1", "node-b") in nodes
    assert ("delivered", "b1", "node-b") in nodes and ("delivered", "b2", "node-a") in nodes
    assert timeline[0]["node"] == "node-a"


async def test_a_stopped_node_does_not_take_its_ring_timeouts_with_it(node_factory: Any) -> None:
    # The call is started on node A, whose timeout poller we stop before the deadline:
    # node B must fire it, once, and tell the devices.
    clock = ManualClock()
    node_a = await node_factory(node_id="node-a", ring_timeout=45, parts=NodeParts(clock=clock))
    node_b = await node_factory(node_id="node-b", ring_timeout=45, parts=NodeParts(clock=clock))
    await node_b.node.timeouts.stop()  # only A polls while the call is created...
    caller = await node_a.device("alice", "a1")
    phone = await node_b.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)

    await node_a.stop()  # ...then A dies, with the call still ringing
    node_b.node.timeouts.start()
    await clock.sleepers()
    clock.advance(45_000)
    # B looks at a few deadline buckets a poll; A's lease on the call's bucket (Redis
    # time, one poll interval) may still keep B off it at first: poll on until it fires.
    for _ in range(40):
        with contextlib.suppress(AssertionError):
            missed = await phone.expect("call.missed", call_id=call_id, timeout=0.1)
            break
        await clock.sleepers()
        clock.advance(200)
    else:
        raise AssertionError("node B never fired the ring timeout")
    assert missed["reason"] == "unanswered"
    states = [e for e in await node_b.node.stores.calls.timeline(call_id) if e["event"] == "state"]
    assert len(states) == 1 and states[0]["to"] == "missed" and states[0]["node"] == "node-b"


async def test_a_leased_timeout_comes_back_when_its_node_dies_mid_fire(node_factory: Any) -> None:
    node = await node_factory(ring_timeout=0.2)
    await node.node.timeouts.stop()
    caller = await node.device("alice", "a1")
    await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    import asyncio

    from voip.clock import now_ms
    from voip.stores.layout import bucket_of

    await asyncio.sleep(0.3)
    stores = node.node.stores
    # A node claims the timeout and dies before firing it: the lease is all that is left.
    bucket = [bucket_of(call_id)]
    assert await stores.calls.claim_due_timeouts(now_ms(), lease_ms=300, node="dead", buckets=bucket) == [call_id]
    assert await stores.calls.claim_due_timeouts(now_ms(), lease_ms=300, node="other", buckets=bucket) == []
    await asyncio.sleep(0.4)
    assert await stores.calls.claim_due_timeouts(now_ms(), lease_ms=300, node="other", buckets=bucket) == [call_id]
    transition = await node.node.controller.fire_timeout(call_id)
    assert transition is not None and transition.call.state == "missed"
    assert await node.node.controller.fire_timeout(call_id) is None  # exactly once
