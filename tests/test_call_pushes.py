"""Calls and their pushes, end to end: a real node, real Redis, aioapns to the APNs simulator."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator, Device, Fault
from tests.conftest import BUNDLE, RunningNode, register
from voip.ws import UNHEARD_WINDOW

pytestmark = pytest.mark.on_cluster_too

VOIP_TOPIC = f"{BUNDLE}.voip"


@pytest.fixture
async def pushing(node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]) -> tuple[RunningNode, APNsSimulator]:
    sim, settings = apns
    return await node_factory(**settings), sim


def phone(sim: APNsSimulator, online: bool = False) -> Device:
    return sim.add_device(VOIP_TOPIC, online=online)


async def invites_for(sim: APNsSimulator, call_id: str, kind: str = "call.incoming", count: int = 1) -> list[Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [
            r
            for r in sim.requests
            if r.status == 200
            and r.body
            and orjson.loads(r.body).get("call_id") == call_id
            and orjson.loads(r.body).get("type") == kind
        ]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"no {count} {kind} push(es) for {call_id}: {[(r.status, r.reason, r.body) for r in sim.requests]}"
    )


async def pushes_on_timeline(node: RunningNode, call_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "push"]
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} push entries on {call_id}")


async def test_invite_push_carries_the_call_and_its_deadline(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    device = phone(sim)
    await register(node, "bob", "b-phone", voip_token=device.token)
    caller = await node.device("alice", "a1", name="Alice A.")
    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]

    [request] = await invites_for(sim, call_id)
    assert request.header("apns-push-type") == "voip"
    assert request.header("apns-topic") == VOIP_TOPIC
    assert request.header("apns-priority") == "10"
    assert request.header("apns-expiration") == str(-(-started["ring_deadline"] // 1000))  # rounded up
    assert request.header("apns-collapse-id") == call_id
    payload = orjson.loads(request.body)
    assert payload["type"] == "call.incoming" and payload["call_id"] == call_id
    assert payload["caller"] == {"id": "alice", "display_name": "Alice A."}
    assert payload["expires_at"] == started["ring_deadline"]
    assert payload["sent_at"] <= payload["expires_at"]

    # The woken app asks status_url without any session of its own.
    response = await node.http().get(payload["status_url"])
    assert response.status_code == 200
    assert response.json()["state"] == "ringing" and response.json()["end_call"] is False

    [entry] = await pushes_on_timeline(node, call_id, 1)
    assert entry["apns_id"] == request.apns_id and entry["outcome"] == "accepted"
    assert entry["kind"] == "invite" and entry["device"] == "b-phone" and entry["status"] == 200
    last = await node.node.connections.client.hget(node.node.stores.keys.last_push("bob"), "b-phone")
    assert last is not None and orjson.loads(last)["apns_id"] == request.apns_id


async def test_offline_phone_wakes_to_the_cancellation_not_the_invite(
    pushing: tuple[RunningNode, APNsSimulator],
) -> None:
    node, sim = pushing
    device = phone(sim, online=False)
    await register(node, "bob", "b-phone", voip_token=device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await invites_for(sim, call_id)
    assert device.pending is not None  # APNs holds the invite for the sleeping phone

    await caller.request({"type": "call.hangup", "call_id": call_id})
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    payload = orjson.loads(cancel.body)
    assert payload["reason"] == "remote_ended" and cancel.header("apns-collapse-id") == call_id
    assert cancel.header("apns-push-type") == "voip"

    device.go_online()
    assert [d.push.payload["type"] for d in device.inbox] == ["call.cancelled"]


async def test_no_cancellation_for_a_device_that_knows(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    online_phone, offline_ipad = phone(sim, online=True), phone(sim)
    await register(node, "bob", "b-phone", voip_token=online_phone.token)
    await register(node, "bob", "b-ipad", voip_token=offline_ipad.token)
    caller = await node.device("alice", "a1")
    connected = await node.device("bob", "b-phone")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await invites_for(sim, call_id, count=2)

    await connected.request({"type": "call.answer", "call_id": call_id})
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    assert cancel.token == offline_ipad.token
    assert orjson.loads(cancel.body)["reason"] == "answered_elsewhere"
    await asyncio.sleep(0.3)
    assert len([r for r in sim.requests if r.token == online_phone.token]) == 1  # the invite only


async def test_no_ending_read_when_the_invites_went_only_to_the_device_that_answered(
    pushing: tuple[RunningNode, APNsSimulator],
) -> None:
    """The transition says where the invites went: nobody else to cancel, nothing to read."""
    node, sim = pushing
    only_phone = phone(sim, online=True)
    await register(node, "bob", "b-phone", voip_token=only_phone.token)
    caller = await node.device("alice", "a1")
    bob = await node.device("bob", "b-phone")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await invites_for(sim, call_id)
    calls = node.node.stores.calls
    reads: list[str] = []
    read = calls.ending_context

    async def counted(call: Any) -> Any:
        reads.append(call.call_id)
        return await read(call)

    calls.ending_context = counted  # type: ignore[method-assign]  # counts the real reads
    await bob.request({"type": "call.answer", "call_id": call_id})
    await caller.expect("call.answered", call_id=call_id)
    await asyncio.sleep(0.3)
    assert reads == []
    assert len([r for r in sim.requests if r.token == only_phone.token]) == 1  # the invite only


async def test_missed_call_cancels_and_alerts(node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]) -> None:
    sim, settings = apns
    node = await node_factory(ring_timeout=0.5, **settings)
    device = phone(sim)
    alerts = sim.add_device(BUNDLE, online=True)
    await register(node, "bob", "b-phone", voip_token=device.token, alert_token=alerts.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    assert orjson.loads(cancel.body)["reason"] == "unanswered"
    [alert] = await invites_for(sim, call_id, "call.missed")
    assert alert.header("apns-push-type") == "alert" and alert.header("apns-topic") == BUNDLE
    assert alert.header("apns-collapse-id") == call_id
    assert orjson.loads(alert.body)["aps"]["alert"] == "Missed call from alice"


async def test_late_invite_gets_end_call_from_its_status_url(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    device = phone(sim)
    await register(node, "bob", "b-phone", voip_token=device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    [invite] = await invites_for(sim, call_id)
    await caller.request({"type": "call.hangup", "call_id": call_id})
    # The invite reaches the phone hours late (as APNs has been seen to do): its own
    # status_url tells the app to end the CallKit call at once.
    response = await node.http().get(orjson.loads(invite.body)["status_url"])
    body = response.json()
    assert (body["state"], body["end_call"], body["reason"]) == ("cancelled", True, "remote_ended")


async def test_410_drops_a_token_registered_before_it_and_tells_the_device(
    pushing: tuple[RunningNode, APNsSimulator],
) -> None:
    node, sim = pushing
    device = phone(sim, online=True)
    await register(node, "bob", "b-phone", voip_token=device.token)
    connected = await node.device("bob", "b-phone")
    sim.inject(Fault.unregistered(timestamp_ms=int(time.time() * 1000) + 1000), token=device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    reregister = await connected.expect("device.reregister")
    assert reregister["reason"] == "Unregistered"
    record = await node.node.stores.devices.get("bob", "b-phone")
    assert record is not None and record["voip_token"] is None
    timeline = await node.node.stores.calls.timeline(call_id)
    assert any(e["event"] == "token" and e["dropped"] for e in timeline)


async def test_410_keeps_a_token_registered_again_after_it(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    device = phone(sim, online=True)
    sim.inject(Fault.unregistered(timestamp_ms=int(time.time() * 1000) - 60_000), token=device.token)
    await register(node, "bob", "b-phone", voip_token=device.token)  # after APNs's timestamp
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    [entry] = await pushes_on_timeline(node, call_id, 1)
    assert entry["outcome"] == "token_invalid" and entry["status"] == 410
    for _ in range(50):
        if any(e["event"] == "token" for e in await node.node.stores.calls.timeline(call_id)):
            break
        await asyncio.sleep(0.02)
    record = await node.node.stores.devices.get("bob", "b-phone")
    assert record is not None and record["voip_token"] == device.token


async def test_a_device_whose_invite_was_refused_is_sent_no_cancellation(
    pushing: tuple[RunningNode, APNsSimulator],
) -> None:
    # Bob's iPad's token is dead (410); his iPhone sleeps. Alice gives up: the iPhone
    # needs a cancellation to displace the invite APNs holds, the iPad has nothing to
    # displace and a push to its token would only be refused again.
    node, sim = pushing
    iphone, ipad = phone(sim), phone(sim)
    await register(node, "bob", "b-iphone", voip_token=iphone.token)
    await register(node, "bob", "b-ipad", voip_token=ipad.token)
    sim.inject(Fault.unregistered(timestamp_ms=int(time.time() * 1000) + 1000), token=ipad.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    entries = await pushes_on_timeline(node, call_id, 2)
    assert {(e["device"], e["outcome"]) for e in entries} == {("b-iphone", "accepted"), ("b-ipad", "token_invalid")}
    await caller.request({"type": "call.hangup", "call_id": call_id})
    [cancellation] = await invites_for(sim, call_id, kind="call.cancelled")
    assert cancellation.token == iphone.token
    await node.node.pushes.wait(5)
    kinds = [(e["kind"], e["device"]) for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "push"]
    assert sorted(kinds) == [("cancel", "b-iphone"), ("invite", "b-ipad"), ("invite", "b-iphone")]
    assert [r.token for r in sim.requests if r.token == ipad.token] == [ipad.token]  # the invite alone


async def test_bad_device_token_is_dropped_with_its_likely_cause(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    await register(node, "bob", "b-phone", voip_token=uuid.uuid4().hex * 2)
    sim.inject(Fault.bad_device_token(), token=None)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    [entry] = await pushes_on_timeline(node, call_id, 1)
    assert entry["reason"] == "BadDeviceToken" and entry["attempts"] == 1
    assert "sandbox/production mismatch" in entry["likely_cause"]
    for _ in range(50):
        record = await node.node.stores.devices.get("bob", "b-phone")
        if record and record["voip_token"] is None:
            break
        await asyncio.sleep(0.02)
    assert record is not None and record["voip_token"] is None


async def test_an_invite_accepted_after_its_cancellation_is_cancelled_again(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    # The invite to Bob's sleeping iPad is slow at APNs (retried, say); meanwhile Bob
    # declines on his phone, on another node, which cancels the iPad at once. APNs then
    # accepts the late invite, displacing the cancellation: the node that sent the invite
    # must notice and cancel again, or the iPad wakes to a ghost call.
    sim, settings = apns
    node_a = await node_factory(node_id="node-a", **settings)
    node_b = await node_factory(node_id="node-b", **settings)
    ipad = phone(sim, online=False)
    await register(node_a, "bob", "b-ipad", voip_token=ipad.token)
    bobs_phone = await node_b.device("bob", "b-phone")
    sim.inject(Fault.slow(0.6), token=ipad.token)
    caller = await node_a.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await bobs_phone.expect("call.incoming", call_id=call_id)
    await bobs_phone.request({"type": "call.decline", "call_id": call_id})

    cancels = await invites_for(sim, call_id, "call.cancelled", count=2)
    assert all(orjson.loads(c.body)["reason"] == "declined_elsewhere" for c in cancels)
    ipad.go_online()
    assert [d.push.payload["type"] for d in ipad.inbox] == ["call.cancelled"]


async def answered_call(node: RunningNode, sim: APNsSimulator) -> tuple[str, Any, Any, Device, Device]:
    """Alice calls Bob, Bob answers on b-phone; both apps registered VoIP tokens."""
    alices, bobs = phone(sim, online=True), phone(sim, online=True)
    await register(node, "alice", "a1", voip_token=alices.token)
    await register(node, "bob", "b-phone", voip_token=bobs.token)
    caller = await node.device("alice", "a1")
    callee = await node.device("bob", "b-phone")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await callee.expect("call.incoming", call_id=call_id)
    assert (await callee.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
    await caller.expect("call.answered", call_id=call_id)
    return call_id, caller, callee, alices, bobs


async def socket_dies(node: RunningNode, client: Any) -> None:
    """The phone's socket dies under the call (no close frame); the node notices."""
    client.socket.transport.abort()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, online = await node.node.stores.devices.reachable(client.user)
        if client.device not in online:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{client.device} still present")


async def pushes_settled(node: RunningNode) -> None:
    pushes = node.node.pushes
    assert pushes is not None and await pushes.tasks.wait(10) == 0


def ended_pushes(sim: APNsSimulator, call_id: str) -> list[Any]:
    """Every call.ended push for the call that reached APNs, whatever APNs answered."""
    payloads = [(r, orjson.loads(r.body)) for r in sim.requests if r.body]
    return [r for r, p in payloads if (p.get("type"), p.get("call_id")) == ("call.ended", call_id)]


async def test_hang_up_reaches_the_answering_device_whose_socket_died(
    pushing: tuple[RunningNode, APNsSimulator],
) -> None:
    node, sim = pushing
    call_id, caller, callee, alices, bobs = await answered_call(node, sim)
    await socket_dies(node, callee)

    assert (await caller.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    await pushes_settled(node)
    [push] = ended_pushes(sim, call_id)
    assert push.status == 200 and push.token == bobs.token
    assert push.header("apns-push-type") == "voip" and push.header("apns-topic") == VOIP_TOPIC
    assert push.header("apns-collapse-id") == call_id and push.header("apns-priority") == "10"
    assert orjson.loads(push.body)["reason"] == "remote_ended"
    assert [d.push.payload["type"] for d in bobs.inbox] == ["call.incoming", "call.ended"]
    assert not [d for d in alices.inbox]  # the caller hung up: she knows
    [entry] = [
        e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "push" and e["kind"] == "ended"
    ]
    assert entry["device"] == "b-phone" and entry["outcome"] == "accepted"


async def test_hang_up_reaches_the_caller_whose_socket_died(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    call_id, caller, callee, alices, _bobs = await answered_call(node, sim)
    await socket_dies(node, caller)

    assert (await callee.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    await pushes_settled(node)
    [push] = ended_pushes(sim, call_id)
    assert push.token == alices.token and orjson.loads(push.body)["reason"] == "remote_ended"
    last = await node.node.connections.client.hget(node.node.stores.keys.last_push("alice"), "a1")
    assert last is not None and orjson.loads(last)["kind"] == "ended"


async def test_no_hang_up_push_to_a_device_whose_socket_is_open(pushing: tuple[RunningNode, APNsSimulator]) -> None:
    node, sim = pushing
    call_id, caller, callee, _alices, bobs = await answered_call(node, sim)

    assert (await caller.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    await callee.expect("call.ended", call_id=call_id, reason="remote_ended")
    await pushes_settled(node)
    assert ended_pushes(sim, call_id) == []
    assert [d.push.payload["type"] for d in bobs.inbox] == ["call.incoming"]


async def test_a_socket_that_closes_as_its_cancellation_goes_out_gets_the_push(
    pushing: tuple[RunningNode, APNsSimulator],
) -> None:
    # The chaos run saw it: the phone was connected when the caller hung up, so the ending
    # sent it no push, and its app closed the socket (going to sleep) as call.cancelled
    # went out, unread. It rang on until the deadline. Now the push goes after all.
    node, sim = pushing
    sleeper, stays = phone(sim), phone(sim)
    await register(node, "bob", "b-phone", voip_token=sleeper.token)
    await register(node, "bob", "b-ipad", voip_token=stays.token)
    caller = await node.device("alice", "a1")
    closing = await node.device("bob", "b-phone")
    staying = await node.device("bob", "b-ipad")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await invites_for(sim, call_id, count=2)
    await closing.expect("call.incoming", call_id=call_id)
    await staying.expect("call.incoming", call_id=call_id)

    await caller.request({"type": "call.hangup", "call_id": call_id})
    await closing.socket.close()  # unread: whatever came after call.incoming
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    assert cancel.token == sleeper.token
    assert orjson.loads(cancel.body)["reason"] == "remote_ended"
    # The device that read its frame and stays connected gets none; nor one twice.
    await staying.expect("call.cancelled", call_id=call_id)
    await asyncio.sleep(UNHEARD_WINDOW + 0.3)
    await staying.socket.close()
    await pushes_settled(node)
    cancels = [r for r in sim.requests if r.body and orjson.loads(r.body).get("type") == "call.cancelled"]
    assert [r.token for r in cancels] == [sleeper.token]
