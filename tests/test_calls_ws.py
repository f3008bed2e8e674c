"""Whole calls between app users over WebSocket, on real nodes and a real Redis."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import RunningNode
from voip.clock import ManualClock
from voip.node import NodeParts
from voip.stores.calls import BUCKETS_PER_TICK
from voip.stores.layout import BUCKETS

pytestmark = pytest.mark.on_cluster_too


async def test_answered_call_from_start_to_hangup(node: RunningNode) -> None:
    caller = await node.device("alice", "a-phone")
    phone = await node.device("bob", "b-phone")
    ipad = await node.device("bob", "b-ipad")

    started = await caller.request({"type": "call.start", "callee": "bob"})
    assert started["type"] == "call.started"
    call_id = started["call_id"]
    assert str(uuid.UUID(call_id)) == call_id
    assert started["state"] == "ringing"

    incoming = await phone.expect("call.incoming", call_id=call_id)
    assert incoming["caller"] == "alice"
    assert incoming["ring_deadline"] == started["ring_deadline"]
    await ipad.expect("call.incoming", call_id=call_id)

    assert (await phone.request({"type": "call.ringing", "call_id": call_id}))["type"] == "ack"
    assert (await ipad.request({"type": "call.ringing", "call_id": call_id}))["type"] == "ack"
    ringing = await caller.expect("call.ringing", call_id=call_id)
    assert ringing["device_id"] in ("b-phone", "b-ipad")

    ack = await phone.request({"type": "call.answer", "call_id": call_id, "sdp": "v=0 answer"})
    assert ack == {"type": "ack", "id": ack["id"], "call_id": call_id}
    answered = await caller.expect("call.answered", call_id=call_id)
    assert answered["device_id"] == "b-phone"
    assert answered["sdp"] == "v=0 answer"
    await phone.expect("call.answered", call_id=call_id, device_id="b-phone")
    elsewhere = await ipad.expect("call.answered_elsewhere", call_id=call_id)
    assert elsewhere["device_id"] == "b-phone"
    # Answered, it can no longer time out: its ring deadline is gone already.
    redis = node.node.connections.client
    assert await redis.zscore(node.node.stores.keys.ring_deadlines(call_id), call_id) is None

    await caller.request({"type": "call.signal", "call_id": call_id, "payload": {"ice": "cand-1"}})
    relayed = await phone.expect("call.signal", call_id=call_id)
    assert relayed["payload"] == {"ice": "cand-1"} and relayed["from_device"] == "a-phone"
    await phone.request({"type": "call.signal", "call_id": call_id, "payload": {"ice": "cand-2"}})
    assert (await caller.expect("call.signal", call_id=call_id))["payload"] == {"ice": "cand-2"}

    # The iPad is out of the call: it can neither hang it up nor signal into it.
    refused = await ipad.request({"type": "call.hangup", "call_id": call_id})
    assert refused["type"] == "error" and refused["code"] == "not_in_call"

    hangup = await phone.request({"type": "call.hangup", "call_id": call_id})
    assert hangup["type"] == "ack" and hangup["state"] == "ended"
    ended = await caller.expect("call.ended", call_id=call_id)
    assert ended["reason"] == "remote_ended"
    await ipad.silent()

    await node.node.deliveries.flush()  # "delivered" entries are written in batches
    timeline = await node.node.stores.calls.timeline(call_id)
    events = [(e["event"], e.get("to")) for e in timeline]
    assert events[0] == ("created", None)
    assert ("state", "answered") in events and ("state", "ended") in events
    assert any(e["event"] == "delivered" and e["device"] == "b-ipad" for e in timeline)
    assert all(e["node"] == node.node.node_id for e in timeline)


async def test_caller_cancels_every_device_is_told(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    ipad = await node.device("bob", "b2")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    await ipad.expect("call.incoming", call_id=call_id)

    reply = await caller.request({"type": "call.hangup", "call_id": call_id})
    assert reply["state"] == "cancelled"
    for device in (phone, ipad):
        cancelled = await device.expect("call.cancelled", call_id=call_id)
        assert cancelled["reason"] == "remote_ended"
    late = await phone.request({"type": "call.answer", "call_id": call_id})
    assert late["code"] == "invalid_state"


async def test_decline_on_one_device_ends_the_call_everywhere(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    ipad = await node.device("bob", "b2")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await ipad.expect("call.incoming", call_id=call_id)
    assert (await phone.request({"type": "call.decline", "call_id": call_id}))["type"] == "ack"
    # Each side in its own CallKit words: the caller's call was ended by the other party,
    # the callee's other devices were declined elsewhere.
    assert (await caller.expect("call.declined", call_id=call_id))["reason"] == "remote_ended"
    assert (await ipad.expect("call.declined", call_id=call_id))["reason"] == "declined_elsewhere"


async def test_ring_timeout_makes_a_missed_call(node_factory) -> None:
    clock = ManualClock()
    node = await node_factory(ring_timeout=45, parts=NodeParts(clock=clock))
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]
    assert started["ring_deadline"] == clock.now_ms() + 45_000
    await phone.expect("call.incoming", call_id=call_id)
    # A millisecond before its deadline the poller looks, and leaves the call ringing.
    await clock.sleepers()
    clock.advance(44_999)
    await clock.sleepers()
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.state == "ringing"
    # A poll looks at BUCKETS_PER_TICK of the BUCKETS deadline buckets: within one round
    # of polls past the deadline, the call's bucket is looked at and the call is missed.
    for _ in range(BUCKETS // BUCKETS_PER_TICK):
        clock.advance(200)
        await clock.sleepers()
        call = await node.node.stores.calls.get(call_id)
        if call is not None and call.state != "ringing":
            break
    assert (await phone.expect("call.missed", call_id=call_id))["reason"] == "unanswered"
    assert (await caller.expect("call.missed", call_id=call_id))["state"] == "missed"
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.state == "missed"
    assert await node.node.connections.client.zscore(node.node.stores.keys.ring_deadlines(call_id), call_id) is None


async def test_a_calls_end_and_its_status_read_the_nodes_clock(node_factory) -> None:
    # Deadlines are set by the node's Clock; the moment a call ends and the "now" of a
    # status verdict must come from the same clock, or under a test's ManualClock (bench
    # --ghosts runs hours of calls on one) a call ends before it began.
    clock = ManualClock()
    node = await node_factory(ring_timeout=45, parts=NodeParts(clock=clock))
    caller = await node.device("alice", "a1")
    await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    clock.advance(3_600_000)
    status = await node.http().get(
        f"/v1/calls/{call_id}/status", headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    )
    assert status.json()["server_time"] == clock.now_ms()
    assert status.json()["end_call"] is True and status.json()["reason"] == "unanswered"
    await caller.request({"type": "call.hangup", "call_id": call_id})
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.ended_at == clock.now_ms()


async def test_a_refused_ringing_or_answer_carries_the_devices_verdict(node: RunningNode) -> None:
    # A "ringing" status verdict that arrived late sends the app to its socket after the
    # call ended: the refusal tells it to end the call, and why, without another round trip.
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    ipad = await node.device("bob", "b2")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.request({"type": "call.answer", "call_id": call_id})
    refused = await ipad.request({"type": "call.answer", "call_id": call_id})
    assert refused["type"] == "error"
    assert (refused["end_call"], refused["reason"]) == (True, "answered_elsewhere")
    await caller.request({"type": "call.hangup", "call_id": call_id})
    refused = await ipad.request({"type": "call.ringing", "call_id": call_id})
    assert (refused["code"], refused["state"], refused["end_call"]) == ("invalid_state", "ended", True)
    assert refused["reason"] == "answered_elsewhere"
    # The caller's own device is not told a callee's verdict.
    wrong = await caller.request({"type": "call.ringing", "call_id": call_id})
    assert wrong["type"] == "error" and "end_call" not in wrong


async def test_call_to_a_user_with_no_device_is_missed_at_once(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    started = await caller.request({"type": "call.start", "callee": "nobody"})
    assert started["state"] == "missed"
    timeline = await node.node.stores.calls.timeline(started["call_id"])
    missed = [e for e in timeline if e["event"] == "state"]
    assert missed == [missed[0]] and missed[0]["to"] == "missed"
    assert missed[0]["note"] == {"why": "no reachable device"}
    assert (await caller.expect("call.missed", call_id=started["call_id"]))["reason"] == "unanswered"


async def test_a_call_nobody_can_take_is_started_before_it_is_missed(node: RunningNode) -> None:
    # The caller learns the call id from call.started; call.missed must not come first.
    # Repeated: the two frames used to race (a reply against a pub/sub delivery).
    caller = await node.device("alice", "a1")
    for attempt in range(20):
        await caller.send({"type": "call.start", "id": attempt, "callee": f"nobody-{attempt}"})
        started, missed = await caller.next(), await caller.next()
        assert (started["type"], started["id"], started["state"]) == ("call.started", attempt, "missed")
        assert (missed["type"], missed["call_id"], missed["reason"]) == (
            "call.missed",
            started["call_id"],
            "unanswered",
        )
    await caller.silent()


async def test_registered_but_offline_device_keeps_the_call_ringing(node: RunningNode) -> None:
    from tests.conftest import register

    await register(node, "bob", "b-offline")
    caller = await node.device("alice", "a1")
    started = await caller.request({"type": "call.start", "callee": "bob"})
    assert started["state"] == "ringing"
    timeline = await node.node.stores.calls.timeline(started["call_id"])
    assert timeline[0]["targets"] == ["b-offline"]


async def test_client_chosen_call_id_is_kept_and_cannot_be_reused(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    await node.device("bob", "b1")
    call_id = str(uuid.uuid4()).upper()  # as CallKit hands it out
    started = await caller.request({"type": "call.start", "callee": "bob", "call_id": call_id})
    assert started["call_id"] == call_id.lower()
    again = await caller.request({"type": "call.start", "callee": "bob", "call_id": call_id})
    assert again["type"] == "error" and again["code"] == "call_exists"


async def test_calling_yourself_is_refused(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    reply = await caller.request({"type": "call.start", "callee": "alice"})
    assert reply["code"] == "invalid_callee"


async def test_the_caller_sending_ringing_is_told_it_is_not_the_callee(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    other = await node.device("alice", "a2")
    phone = await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    for device in (caller, other):
        refused = await device.request({"type": "call.ringing", "call_id": call_id})
        assert (refused["type"], refused["code"], refused["call_id"]) == ("error", "not_callee", call_id)
    # not_in_call keeps its one meaning: the caller's other device moving the call.
    assert (await other.request({"type": "call.hangup", "call_id": call_id}))["code"] == "not_in_call"
    assert not [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "ringing"]
    await caller.silent()
