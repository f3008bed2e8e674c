"""Signed call-event webhooks, end to end: real nodes, real Redis (and a Redis Cluster),
a real HTTP receiver on loopback that checks every signature, goes down and comes back."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from apnsim import APNsSimulator, Fault
from tests.conftest import BUNDLE, RunningNode, register
from tests.http_receiver import HttpReceiver, Received
from voip.webhooks.events import EventType
from voip.webhooks.signing import verify

pytestmark = pytest.mark.on_cluster_too

SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def receiver() -> Any:
    receiver = await HttpReceiver().start()
    yield receiver
    await receiver.stop()


def webhook_settings(*urls: str) -> dict[str, Any]:
    return {"webhook_urls": ",".join(urls), "webhook_secret": SECRET}


def checked(request: Received) -> dict[str, Any]:
    """The event, once its signature and headers are what docs/webhooks.md says."""
    assert verify(SECRET, request.body, request.headers["voip-signature"]), request.headers
    assert not verify("another-secret-0123456789", request.body, request.headers["voip-signature"])
    event: dict[str, Any] = request.json()
    assert request.headers["voip-event-id"] == event["id"]
    assert request.headers["content-type"] == "application/json"
    return event


def events_of(receiver: HttpReceiver, call_id: str) -> list[dict[str, Any]]:
    return [e for e in (checked(r) for r in receiver.received) if e["call"]["call_id"] == call_id]


async def wait_events(receiver: HttpReceiver, call_id: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        events = events_of(receiver, call_id)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"{call_id}: {[e['type'] for e in events_of(receiver, call_id)]}")


async def failing_noted(filing: RunningNode) -> None:
    """Until a delivery attempt has failed (the receiver is down) and been recorded."""
    for _ in range(300):
        if await filing.node.stores.webhooks.failures():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no failed delivery recorded")


async def answered_call(node: RunningNode) -> str:
    alice = await node.device("alice", "a1", name="Alice Liddell")
    bob = await node.device("bob", "b1")
    started = await alice.request({"type": "call.start", "callee": "bob"})
    call_id = str(started["call_id"])
    await bob.expect("call.incoming", call_id=call_id)
    assert (await bob.request({"type": "call.ringing", "call_id": call_id}))["type"] == "ack"
    assert (await bob.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
    await alice.expect("call.answered", call_id=call_id)
    assert (await alice.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    return call_id


async def test_a_call_s_events_arrive_signed_in_order_with_the_call_as_it_was(
    node_factory: Any, receiver: HttpReceiver
) -> None:
    node = await node_factory(**webhook_settings(receiver.url))
    call_id = await answered_call(node)

    events = await wait_events(receiver, call_id, 4)
    assert [e["type"] for e in events] == ["call.created", "call.ringing", "call.answered", "call.ended"]
    assert len({e["id"] for e in events}) == 4
    created, ringing, answered, ended = (e["call"] for e in events)
    assert created["caller"] == {"user": "alice", "device": "a1", "name": "Alice Liddell"}
    assert created["callee"] == "bob" and created["state"] == "ringing" and created["reason"] is None
    assert created["answered_at"] is None and created["duration_ms"] is None
    assert ringing["state"] == "ringing"
    assert answered["state"] == "answered" and answered["answered_by_device"] == "b1"
    assert answered["ended_at"] is None
    assert ended["state"] == "ended" and ended["reason"] == "remote_ended"
    assert ended["started_at"] <= ended["answered_at"] <= ended["ended_at"]
    assert ended["duration_ms"] == ended["ended_at"] - ended["answered_at"]
    assert all(e["created_at"] >= created["started_at"] for e in events)
    # Nothing more comes: the call is over and every event delivered.
    await asyncio.sleep(0.5)
    assert len(events_of(receiver, call_id)) == 4


@pytest.mark.parametrize(
    ("who", "action", "event", "reason"),
    [
        ("caller", "call.hangup", "call.cancelled", "remote_ended"),
        ("callee", "call.decline", "call.declined", "declined_elsewhere"),
    ],
)
async def test_a_call_that_never_connects_ends_in_its_own_event(
    node_factory: Any, receiver: HttpReceiver, who: str, action: str, event: str, reason: str
) -> None:
    node = await node_factory(**webhook_settings(receiver.url))
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    call_id = (await alice.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await bob.expect("call.incoming", call_id=call_id)
    actor = alice if who == "caller" else bob
    assert (await actor.request({"type": action, "call_id": call_id}))["type"] == "ack"

    events = await wait_events(receiver, call_id, 2)
    assert [e["type"] for e in events] == ["call.created", event]
    assert events[1]["call"]["reason"] == reason and events[1]["call"]["duration_ms"] == 0


async def test_a_call_nobody_can_take_is_missed(node_factory: Any, receiver: HttpReceiver) -> None:
    node = await node_factory(**webhook_settings(receiver.url))
    alice = await node.device("alice", "a1")
    call_id = (await alice.request({"type": "call.start", "callee": "nobody"}))["call_id"]
    events = await wait_events(receiver, call_id, 2)
    assert [e["type"] for e in events] == ["call.created", "call.missed"]
    assert events[1]["call"]["reason"] == "unanswered"


async def test_a_receiver_down_mid_run_gets_every_event_once_it_is_back_each_once(
    node_factory: Any, receiver: HttpReceiver
) -> None:
    node = await node_factory(**webhook_settings(receiver.url))
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    first = (await alice.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await wait_events(receiver, first, 1)
    await receiver.stop()

    # While it is down: the rest of this call, and two more calls.
    await bob.request({"type": "call.decline", "call_id": first})
    others = []
    for _ in range(2):
        call_id = (await alice.request({"type": "call.start", "callee": "bob"}))["call_id"]
        await bob.expect("call.incoming", call_id=call_id)
        await alice.request({"type": "call.hangup", "call_id": call_id})
        others.append(call_id)
    await failing_noted(filing=node)
    await receiver.start()  # the same port

    assert [e["type"] for e in await wait_events(receiver, first, 2)] == ["call.created", "call.declined"]
    for call_id in others:
        assert [e["type"] for e in await wait_events(receiver, call_id, 2)] == ["call.created", "call.cancelled"]
    await asyncio.sleep(0.5)
    ids = Counter(checked(r)["id"] for r in receiver.received)
    assert len(ids) == 6 and set(ids.values()) == {1}, ids


async def test_two_nodes_share_the_outbox_what_one_filed_the_other_delivers(
    node_factory: Any, receiver: HttpReceiver
) -> None:
    filing = await node_factory(**webhook_settings(receiver.url))
    await receiver.stop()  # filing's attempts fail: the events wait in Redis
    alice = await filing.device("alice", "a1")
    call_id = (await alice.request({"type": "call.start", "callee": "nobody"}))["call_id"]
    await failing_noted(filing)
    await filing.stop()  # gone, its events undelivered

    other = await node_factory(**webhook_settings(receiver.url))
    await receiver.start()
    events = await wait_events(receiver, call_id, 2)
    assert [e["type"] for e in events] == ["call.created", "call.missed"]
    assert other.node.webhooks is not None


async def test_every_url_gets_every_event_a_failing_one_holds_up_no_other(node_factory: Any) -> None:
    up = await HttpReceiver().start()
    failing = await HttpReceiver(respond=lambda _: (503, b"")).start()
    try:
        node = await node_factory(**webhook_settings(up.url, failing.url))
        alice = await node.device("alice", "a1")
        call_id = (await alice.request({"type": "call.start", "callee": "nobody"}))["call_id"]
        assert [e["type"] for e in await wait_events(up, call_id, 2)] == ["call.created", "call.missed"]
        await failing.wait_attempts(2)  # tried, failed, tried again
        assert failing.received == []

        # Operators see it: /v1/ops/summary (the page's card) and /metrics.
        ops = node.http()
        token = node.auth.mint("ops", "operator")
        summary = (await ops.get("/v1/ops/summary", headers={"Authorization": f"Bearer {token}"})).json()
        [failure] = summary["webhooks"]["failing"]
        assert failure["url"] == failing.url and failure["error"] == "HTTP 503"
        assert summary["webhooks"]["urls"] == 2 and summary["webhooks"]["calls_filed"] >= 1
        metrics = (await ops.get("/metrics", headers={"Authorization": f"Bearer {token}"})).text
        assert 'voip_webhook_deliveries_total{outcome="failed"}' in metrics
        assert 'voip_webhook_deliveries_total{outcome="delivered"}' in metrics
    finally:
        await up.stop()
        await failing.stop()


async def test_a_push_apns_refuses_is_a_push_failed_event(
    node_factory: Any, receiver: HttpReceiver, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    sim, settings = apns
    node = await node_factory(**settings, **webhook_settings(receiver.url))
    await register(node, "bob", "b-phone", bundle_id=BUNDLE)
    sim.inject(Fault.bad_device_token(), token=None)
    alice = await node.device("alice", "a1")
    call_id = (await alice.request({"type": "call.start", "callee": "bob"}))["call_id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not [e for e in events_of(receiver, call_id) if e["type"] == EventType.PUSH_FAILED]:
        assert loop.time() < deadline, [e["type"] for e in events_of(receiver, call_id)]
        await asyncio.sleep(0.05)
    [failed] = [e for e in events_of(receiver, call_id) if e["type"] == EventType.PUSH_FAILED]
    assert failed["push"]["device"] == "b-phone" and failed["push"]["kind"] == "invite"
    assert failed["push"]["reason"] == "BadDeviceToken"
    assert failed["call"]["call_id"] == call_id


async def test_two_live_nodes_deliver_every_call_s_events_once_and_in_order(
    node_factory: Any, receiver: HttpReceiver
) -> None:
    a = await node_factory(**webhook_settings(receiver.url))
    b = await node_factory(**webhook_settings(receiver.url))
    # Callers on one node, callees on the other: each call's events are filed by both.
    alice = await a.device("alice", "a1")
    bob = await b.device("bob", "b1")
    calls = []
    for _ in range(6):
        call_id = (await alice.request({"type": "call.start", "callee": "bob"}))["call_id"]
        await bob.expect("call.incoming", call_id=call_id)
        assert (await bob.request({"type": "call.ringing", "call_id": call_id}))["type"] == "ack"
        assert (await bob.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
        assert (await alice.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
        calls.append(call_id)
    for call_id in calls:
        events = await wait_events(receiver, call_id, 4)
        assert [e["type"] for e in events] == ["call.created", "call.ringing", "call.answered", "call.ended"]
    await asyncio.sleep(0.5)
    ids = Counter(checked(r)["id"] for r in receiver.received)
    assert len(ids) == 24 and set(ids.values()) == {1}


async def test_a_call_do_not_disturb_turns_away_is_missed_with_reason_dnd(
    node_factory: Any, receiver: HttpReceiver
) -> None:
    from tests.test_history import set_availability

    node = await node_factory(**webhook_settings(receiver.url))
    await set_availability(node, "bob", dnd=True, when_busy="ring")
    alice = await node.device("alice", "a1")
    started = await alice.request({"type": "call.start", "callee": "bob"})
    events = await wait_events(receiver, started["call_id"], 2)
    assert [e["type"] for e in events] == ["call.created", "call.missed"]
    assert events[1]["call"]["reason"] == "dnd"
