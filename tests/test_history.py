"""Call history (`GET /v1/calls`, `POST /v1/calls/seen`) and availability
(`/v1/me/availability`: do-not-disturb, busy), end to end on real nodes and a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import BUNDLE, DeviceClient, RunningNode, register
from voip.controller import Caller

pytestmark = pytest.mark.on_cluster_too


def bearer(node: RunningNode, user: str, role: str = "device") -> dict[str, str]:
    return {"Authorization": f"Bearer {node.auth.mint(user, role)}"}


async def history(node: RunningNode, user: str, **params: Any) -> dict[str, Any]:
    response = await node.http().get("/v1/calls", params=params, headers=bearer(node, user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def set_availability(node: RunningNode, user: str, **body: Any) -> dict[str, Any]:
    response = await node.http().put("/v1/me/availability", json=body, headers=bearer(node, user))
    assert response.status_code == 200, response.text
    saved: dict[str, Any] = response.json()
    return saved


async def call(caller: DeviceClient, callee: str) -> tuple[str, dict[str, Any]]:
    started = await caller.request({"type": "call.start", "callee": callee})
    assert started["type"] == "call.started", started
    return started["call_id"], started


async def test_each_user_sees_their_own_calls_in_their_own_words(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    carol = await node.device("carol", "c1")

    answered, _ = await call(alice, "bob")
    await bob.expect("call.incoming", call_id=answered)
    await bob.request({"type": "call.answer", "call_id": answered})
    await alice.expect("call.answered", call_id=answered)
    await alice.request({"type": "call.hangup", "call_id": answered})
    declined, _ = await call(carol, "bob")
    await bob.expect("call.incoming", call_id=declined)
    await bob.request({"type": "call.decline", "call_id": declined})
    cancelled, _ = await call(alice, "bob")
    await bob.expect("call.incoming", call_id=cancelled)
    await alice.request({"type": "call.hangup", "call_id": cancelled})
    ringing, _ = await call(bob, "carol")

    bobs = await history(node, "bob")
    assert [c["call_id"] for c in bobs["calls"]] == [ringing, cancelled, declined, answered]
    assert bobs["next_cursor"] is None
    by_id = {c["call_id"]: c for c in bobs["calls"]}
    first = by_id[answered]
    assert first["direction"] == "incoming" and first["peer"] == "alice" and first["state"] == "ended"
    assert first["reason"] == "remote_ended" and first["answered_by_device"] == "b1"
    assert first["duration_ms"] == first["ended_at"] - first["answered_at"] >= 0
    assert first["started_at"] <= first["answered_at"] <= first["ended_at"]
    assert by_id[declined] | {"started_at": 0, "ended_at": 0} == {
        "call_id": declined,
        "direction": "incoming",
        "peer": "carol",
        "state": "declined",
        "reason": "declined_elsewhere",
        "started_at": 0,
        "answered_at": None,
        "ended_at": 0,
        "duration_ms": 0,
        "answered_by_device": None,
    }
    live = by_id[ringing]
    assert live["direction"] == "outgoing" and live["state"] == "ringing"
    assert live["reason"] is None and live["duration_ms"] is None and live["ended_at"] is None
    # Only the cancelled call is a missed one: the declined call was the user's own choice.
    assert bobs["missed_unseen"] == 1

    alices = await history(node, "alice")
    assert [c["call_id"] for c in alices["calls"]] == [cancelled, answered]
    assert {c["direction"] for c in alices["calls"]} == {"outgoing"}
    assert alices["missed_unseen"] == 0
    carols = await history(node, "carol")
    assert {c["call_id"]: c["reason"] for c in carols["calls"]} == {ringing: None, declined: "remote_ended"}
    assert (await history(node, "dave"))["calls"] == []


async def test_pages_neither_repeat_nor_skip_while_calls_are_made(node_factory: Any) -> None:
    node = await node_factory(max_ringing_per_callee=1000, calls_per_callee_per_minute=100000)
    controller = node.node.controller
    before = [(await controller.start_call(Caller("alice", "a1"), f"callee-{i % 5}")).call_id for i in range(30)]
    making = True

    async def meanwhile() -> list[str]:
        made = []
        while making:
            made.append((await controller.start_call(Caller("alice", "a1"), "callee-x")).call_id)
            await asyncio.sleep(0)
        return made

    maker = asyncio.create_task(meanwhile())
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await history(node, "alice", limit=4, **({"cursor": cursor} if cursor else {}))
        seen += page["calls"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    making = False
    during = await maker
    ids = [c["call_id"] for c in seen]
    assert len(ids) == len(set(ids)), "a call repeated across pages"
    assert set(before) <= set(ids), "a call made before the listing was skipped"
    order = [(c["started_at"], c["call_id"]) for c in seen]
    assert order == sorted(order, reverse=True)
    assert pages >= 8 and during, (pages, len(during))


async def test_seen_marks_missed_calls_on_every_device(node_factory: Any) -> None:
    node, other = await node_factory(), await node_factory()
    alice = await node.device("alice", "a1")
    phone = await node.device("bob", "b-phone")
    ipad = await other.device("bob", "b-ipad")  # on another node
    missed = []
    for _ in range(2):
        call_id, _ = await call(alice, "bob")
        await phone.expect("call.incoming", call_id=call_id)
        await alice.request({"type": "call.hangup", "call_id": call_id})
        await phone.expect("call.cancelled", call_id=call_id)
        await ipad.expect("call.cancelled", call_id=call_id)
        missed.append(call_id)
    page = await history(node, "bob")
    assert page["missed_unseen"] == 2
    newest = page["calls"][0]["started_at"]

    client = node.http()
    response = await client.post(
        "/v1/calls/seen", params={"device_id": "b-phone"}, json={"up_to": newest}, headers=bearer(node, "bob")
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"up_to": newest, "missed_unseen": 0}
    frame = await ipad.expect("calls.seen")
    assert frame == {"type": "calls.seen", "up_to": newest, "missed_unseen": 0}
    await phone.silent(0.3)  # the device that marked knows
    assert (await history(node, "bob"))["missed_unseen"] == 0

    # The mark never moves back: an older up_to from a device behind leaves it.
    response = await client.post("/v1/calls/seen", json={"up_to": newest - 10_000}, headers=bearer(node, "bob"))
    assert response.json()["up_to"] == newest
    # A later missed call counts again.
    later, _ = await call(alice, "bob")
    await alice.request({"type": "call.hangup", "call_id": later})
    assert (await history(node, "bob"))["missed_unseen"] == 1


async def test_history_is_kept_its_retention_and_strays_are_dropped(node_factory: Any) -> None:
    node = await node_factory(history_retention=120)
    redis = node.node.connections.client
    keys = node.node.stores.keys
    alice = await node.device("alice", "a1")
    call_id, _ = await call(alice, "bob")
    await alice.request({"type": "call.hangup", "call_id": call_id})
    assert 0 < await redis.ttl(keys.history_record(call_id)) <= 120
    for user in ("alice", "bob"):
        assert 0 < await redis.pttl(keys.history(user)) <= 120_000
    # The call keeps the retention of the node that made it, whichever node ends it.
    assert await redis.hget(keys.call(call_id), "history_retention") == b"120"

    now = int(time.time() * 1000)
    old, stray = str(uuid.uuid4()), str(uuid.uuid4())
    # An entry past retention, and one whose call never came to be (over a minute old).
    await redis.zadd(keys.history("alice"), {old: now - 121_000, stray: now - 61_000})
    assert [c["call_id"] for c in (await history(node, "alice"))["calls"]] == [call_id]
    assert await redis.zscore(keys.history("alice"), stray) is None  # dropped when read
    second, _ = await call(alice, "bob")
    assert await redis.zscore(keys.history("alice"), old) is None  # trimmed on the next call
    # A record gone with its retention takes its call out of the listing.
    await redis.delete(keys.history_record(call_id))
    assert [c["call_id"] for c in (await history(node, "alice"))["calls"]] == [second]


async def test_do_not_disturb_rings_nothing_and_pushes_nothing(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    sim, settings = apns
    node = await node_factory(**settings)
    phone_token = sim.add_device(f"{BUNDLE}.voip").token
    await register(node, "bob", "b-phone", voip_token=phone_token, bundle_id=BUNDLE)
    ipad = await node.device("bob", "b-ipad")
    alice = await node.device("alice", "a1")
    saved = await set_availability(node, "bob", dnd=True, when_busy="ring")
    assert saved == {"dnd": True, "until": None, "when_busy": "ring"}

    quiet, started = await call(alice, "bob")
    assert started["state"] == "missed"
    declined = await alice.expect("call.declined", call_id=quiet)
    assert declined["reason"] == "dnd" and declined["state"] == "missed"
    [entry] = [c for c in (await history(node, "bob"))["calls"] if c["call_id"] == quiet]
    assert (entry["direction"], entry["state"], entry["reason"]) == ("incoming", "missed", "dnd")
    [mine] = (await history(node, "alice"))["calls"]
    assert (mine["direction"], mine["state"], mine["reason"]) == ("outgoing", "missed", "dnd")
    assert (await history(node, "bob"))["missed_unseen"] == 1

    # Do-not-disturb off: the next call pushes. Its push arriving shows the simulator is
    # heard; the quiet call's, had there been one, was sent before it.
    assert (await set_availability(node, "bob", dnd=False, when_busy="ring"))["dnd"] is False
    loud, _ = await call(alice, "bob")
    await ipad.expect("call.incoming", call_id=loud)
    deadline = time.monotonic() + 5
    while not any(orjson.loads(r.body).get("call_id") == loud for r in sim.requests if r.body):
        assert time.monotonic() < deadline, "the second call's invite push never came"
        await asyncio.sleep(0.02)
    pushed = {orjson.loads(r.body).get("call_id") for r in sim.requests if r.body}
    assert quiet not in pushed
    # The iPad heard nothing of the quiet call: its first frame is the loud call's.
    assert not [f for f in ipad.backlog if f.get("call_id") == quiet]


async def test_do_not_disturb_until_a_time(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    until = int(time.time() * 1000) + 3_600_000
    assert await set_availability(node, "bob", dnd=True, until=until, when_busy="reject") == {
        "dnd": True,
        "until": until,
        "when_busy": "reject",
    }
    response = await node.http().get("/v1/me/availability", headers=bearer(node, "bob"))
    assert response.json() == {"dnd": True, "until": until, "when_busy": "reject"}
    _call_id, started = await call(alice, "bob")
    assert started["state"] == "missed"
    # Past its `until`, do-not-disturb is off by itself (here: moved into the past in Redis).
    await node.node.connections.client.hset(node.node.stores.keys.availability("bob"), "until", "1")
    response = await node.http().get("/v1/me/availability", headers=bearer(node, "bob"))
    assert response.json() == {"dnd": False, "until": None, "when_busy": "reject"}
    rings, started = await call(alice, "bob")
    assert started["state"] == "ringing"
    await bob.expect("call.incoming", call_id=rings)


async def test_busy_rejects_only_with_reject_and_an_answered_call(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    carol = await node.device("carol", "c1")
    first, _ = await call(carol, "bob")
    await bob.expect("call.incoming", call_id=first)
    await bob.request({"type": "call.answer", "call_id": first})

    # The default, `ring`: a second call rings the user in a call (call waiting).
    waiting, started = await call(alice, "bob")
    assert started["state"] == "ringing"
    await bob.expect("call.incoming", call_id=waiting)
    await alice.request({"type": "call.hangup", "call_id": waiting})

    await set_availability(node, "bob", dnd=False, when_busy="reject")
    busy, started = await call(alice, "bob")
    assert started["state"] == "missed"
    declined = await alice.expect("call.declined", call_id=busy)
    assert declined["reason"] == "busy"
    [entry] = [c for c in (await history(node, "bob"))["calls"] if c["call_id"] == busy]
    assert (entry["state"], entry["reason"]) == ("missed", "busy")
    # The caller in an answered call is busy too (carol placed it).
    also_busy, started = await call(alice, "carol")
    await set_availability(node, "carol", dnd=False, when_busy="reject")
    assert started["state"] == "ringing"  # carol's rule was `ring` when that call came
    await alice.request({"type": "call.hangup", "call_id": also_busy})
    assert (await call(alice, "carol"))[1]["state"] == "missed"

    await carol.request({"type": "call.hangup", "call_id": first})
    after, started = await call(alice, "bob")
    assert started["state"] == "ringing"
    await bob.expect("call.incoming", call_id=after)


async def test_an_in_call_entry_whose_end_was_lost_turns_nobody_away(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    await set_availability(node, "bob", dnd=False, when_busy="reject")
    # A node died between ending a call and updating bob's in-call set: the entry names
    # a call that is not answered (here: no call at all).
    redis = node.node.connections.client
    ghost = str(uuid.uuid4())
    await redis.zadd(node.node.stores.keys.in_call("bob"), {ghost: int(time.time() * 1000) + 3_600_000})
    call_id, started = await call(alice, "bob")
    assert started["state"] == "ringing"
    await bob.expect("call.incoming", call_id=call_id)
    assert await redis.zscore(node.node.stores.keys.in_call("bob"), ghost) is None


async def test_every_bad_input_is_a_4xx_json_error(node: RunningNode) -> None:
    client = node.http()
    device = bearer(node, "bob")
    bad_gets = [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"limit": "1" * 40},
        {"cursor": "nope"},
        {"cursor": "12:not-a-uuid"},
        {"cursor": "1" * 17 + ":" + str(uuid.uuid4())},
        {"page": "2"},
    ]
    for params in bad_gets:
        response = await client.get("/v1/calls", params=params, headers=device)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"] == "validation_error"
    now = int(time.time() * 1000)
    bad_seen: list[Any] = [
        {},
        {"up_to": "1"},
        {"up_to": -1},
        {"up_to": True},
        {"up_to": 1.5},
        {"up_to": 2**53},
        {"up_to": now + 2 * 86_400_000},
        {"up_to": 1, "extra": 1},
        [],
        "x",
    ]
    for body in bad_seen:
        response = await client.post("/v1/calls/seen", json=body, headers=device)
        assert response.status_code == 422, (body, response.text)
    for raw in (b"{", b"\xff"):
        response = await client.post("/v1/calls/seen", content=raw, headers=device)
        assert response.status_code == 422, raw
    response = await client.post("/v1/calls/seen", params={"device_id": ".."}, json={"up_to": 1}, headers=device)
    assert response.status_code == 422
    bad_availability: list[Any] = [
        {},
        {"dnd": True},
        {"when_busy": "ring"},
        {"dnd": "yes", "when_busy": "ring"},
        {"dnd": 1, "when_busy": "ring"},
        {"dnd": True, "when_busy": "sometimes"},
        {"dnd": True, "when_busy": "ring", "until": now - 1},
        {"dnd": True, "when_busy": "ring", "until": "tomorrow"},
        {"dnd": False, "when_busy": "ring", "until": now + 60_000},
        {"dnd": True, "when_busy": "ring", "mood": "grumpy"},
        None,
    ]
    for body in bad_availability:
        response = await client.put("/v1/me/availability", json=body, headers=device)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"] == "validation_error"
    response = await client.put("/v1/me/availability", content=b"x" * 20000, headers=device)
    assert response.status_code == 413
    for method, path in (("GET", "/v1/calls"), ("POST", "/v1/calls/seen"), ("GET", "/v1/me/availability")):
        response = await client.request(method, path, json={"up_to": 1})
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
        response = await client.request(method, path, json={"up_to": 1}, headers=bearer(node, "ops", "operator"))
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
    response = await client.delete("/v1/me/availability", headers=device)
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT"}
    # Nothing was saved by any of it.
    response = await client.get("/v1/me/availability", headers=device)
    assert response.json() == {"dnd": False, "until": None, "when_busy": "ring"}
