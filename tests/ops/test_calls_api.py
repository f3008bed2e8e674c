"""Operators' HTTP API on a real node and Redis: calls listed (filters, pages), one call
with its whole timeline, a user's devices, and the counters."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import RunningNode, register
from tests.ops.conftest import ops_get, place_call
from voip.clock import now_ms

pytestmark = pytest.mark.on_cluster_too


async def test_listing_newest_first_by_state_user_and_time(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    carol = await node.device("carol", "c1")
    ringing = await place_call(alice, "bob")
    answered = await place_call(carol, "bob")
    await bob.expect("call.incoming", call_id=answered)
    assert (await bob.request({"type": "call.answer", "call_id": answered}))["type"] == "ack"
    missed = await place_call(alice, "nobody")

    everything = (await ops_get(node, "/v1/ops/calls")).json()
    assert [c["call_id"] for c in everything["calls"]] == [missed, answered, ringing]
    assert everything["next_cursor"] is None
    first = everything["calls"][1]
    assert first["state"] == "answered" and first["answered_by_device"] == "b1"
    assert first["caller_user"] == "carol" and first["origin_node"] == node.node.node_id

    async def ids(**params: object) -> list[str]:
        response = await ops_get(node, "/v1/ops/calls", **params)
        assert response.status_code == 200, response.text
        return [c["call_id"] for c in response.json()["calls"]]

    assert await ids(state="ringing") == [ringing]
    assert await ids(state=["ringing", "answered"]) == [answered, ringing]
    assert await ids(state="missed") == [missed]
    assert await ids(user="alice") == [missed, ringing]
    assert await ids(user="bob", state="answered") == [answered]
    created = {c["call_id"]: c["created_at"] for c in everything["calls"]}
    assert await ids(since=created[answered]) == [missed, answered]
    assert await ids(until=created[answered]) == [answered, ringing]


async def test_pages_visit_every_call_once_even_within_one_millisecond(node: RunningNode) -> None:
    stores = node.node.stores
    same_ms = now_ms()
    made = []
    for n, created_at in enumerate([same_ms - 5, *[same_ms] * 5, same_ms + 5]):
        call_id = str(uuid.uuid4())
        made.append((created_at, call_id))
        assert await stores.calls.create(
            call_id,
            caller_user=f"u{n}",
            caller_device="d",
            callee_user="v",
            ring_deadline=created_at + 60_000,
            node="n",
            targets=["t"],
            created_at=created_at,
        )
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await ops_get(node, "/v1/ops/calls", **params)).json()
        assert len(page["calls"]) <= 2
        seen += [c["call_id"] for c in page["calls"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [call_id for _, call_id in sorted(made, reverse=True)]


async def test_expired_calls_drop_out_of_the_listing_and_the_index(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    kept, expired = await place_call(caller, "nobody"), await place_call(caller, "nobody")
    stores = node.node.stores
    await node.node.connections.client.delete(
        stores.keys.call(expired), stores.keys.timeline(expired)
    )  # as its retention would
    listed = (await ops_get(node, "/v1/ops/calls")).json()["calls"]
    assert [c["call_id"] for c in listed] == [kept]
    assert await node.node.connections.client.zscore(stores.keys.calls_index(expired), expired) is None


async def test_bad_parameters_are_422_naming_the_field(node: RunningNode) -> None:
    for params, field in [
        ({"state": "ringing-ish"}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": 10, "until": 5}, "since"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"user": "x" * 129}, "user"),
    ]:
        response = await ops_get(node, "/v1/ops/calls", **params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["detail"][0]["field"] == field
    assert (await ops_get(node, "/v1/ops/calls/not-a-uuid")).status_code == 422
    assert (await ops_get(node, "/v1/ops/summary", since=9, until=1)).status_code == 422


async def test_one_call_with_its_whole_timeline(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    bob = await node.device("bob", "b1")
    call_id = await place_call(alice, "bob")
    await bob.expect("call.incoming", call_id=call_id)
    await bob.request({"type": "call.ringing", "call_id": call_id})
    await bob.request({"type": "call.answer", "call_id": call_id})
    await alice.request({"type": "call.hangup", "call_id": call_id})
    # The timeline is whole once Bob has the ending and the node's delivery log (which
    # writes "delivered" entries in batches) has written it: else two reads may differ.
    await bob.expect("call.ended", call_id=call_id)
    await node.node.deliveries.flush()

    response = await ops_get(node, f"/v1/ops/calls/{call_id.upper()}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["call"]["state"] == "ended" and detail["call"]["ended_by"] == "caller"
    assert detail["timeline"] == await node.node.stores.calls.timeline(call_id)
    kinds = [(e["event"], e.get("to")) for e in detail["timeline"]]
    assert kinds[0] == ("created", None)
    assert ("ringing", None) in kinds and ("state", "answered") in kinds and kinds.count(("state", "ended")) == 1

    unknown = await ops_get(node, f"/v1/ops/calls/{uuid.uuid4()}")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_call"


async def test_a_users_devices_with_token_age_presence_and_last_push(node: RunningNode) -> None:
    await register(node, "bob", "b-phone", bundle_id="com.example.app")
    await register(node, "bob", "b-ipad")
    await node.device("bob", "b-phone")
    push = {"at": now_ms(), "status": 410, "reason": "Unregistered", "apns_id": "A-1", "call_id": "c"}
    await node.node.stores.push_log.record_last_push("bob", "b-ipad", push)

    body = (await ops_get(node, "/v1/ops/devices/bob")).json()
    assert body["user"] == "bob"
    phone, ipad = body["devices"][1], body["devices"][0]
    assert (phone["device_id"], ipad["device_id"]) == ("b-phone", "b-ipad")
    assert phone["online"] is True and phone["connected_node"] == node.node.node_id
    assert ipad["online"] is False and ipad["connected_node"] is None
    assert phone["bundle_id"] == "com.example.app" and len(phone["voip_token_prefix"]) == 8
    assert 0 <= phone["token_age_ms"] < 10_000
    assert "voip_token" not in phone
    assert ipad["last_push"] == push and phone["last_push"] is None
    assert (await ops_get(node, "/v1/ops/devices/nobody")).json() == {"user": "nobody", "devices": []}


async def test_summary_counts_outcomes_of_the_window(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    await node.device("bob", "b1")
    await place_call(alice, "bob")
    await place_call(alice, "nobody")
    summary = (await ops_get(node, "/v1/ops/summary")).json()
    assert summary["calls"] == 2 and summary["truncated"] is False
    assert summary["outcomes"] == {"missed": 1, "ringing": 1}
    assert summary["push_results"] == {}
    assert summary["late_pushes_caught"] == {"status_checks": 0, "calls": 0}
    assert summary["until"] - summary["since"] == 3_600_000


async def test_status_checks_show_the_verdict_given_and_how_late(node: RunningNode) -> None:
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    device = {"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    client = node.http()
    await client.get(f"/v1/calls/{call_id}/status", params={"device_id": "b1"}, headers=device)
    await caller.request({"type": "call.hangup", "call_id": call_id})
    await client.get(f"/v1/calls/{call_id}/status", params={"device_id": "b1"}, headers=device)

    operator = {"Authorization": f"Bearer {node.auth.mint('ops', 'operator')}"}
    timeline = (await client.get(f"/v1/ops/calls/{call_id}", headers=operator)).json()["timeline"]
    ringing, late = [e for e in timeline if e["event"] == "status_check"]
    assert (ringing["end_call"], ringing["reason"]) == (False, None) and "late_ms" not in ringing
    assert (late["end_call"], late["reason"]) == (True, "remote_ended")
    assert 0 <= late["late_ms"] < 5000


async def test_push_entries_written_as_delivered_read_as_accepted(node: RunningNode) -> None:
    """Before the rename, an APNs 200 was stored as outcome "delivered"; it reads as
    "accepted" in a call's timeline and in a device's last push."""
    alice = await node.device("alice", "a-phone")
    call_id = await place_call(alice, "bob")
    old = {
        "at": now_ms(),
        "event": "push",
        "kind": "invite",
        "device": "b-ipad",
        "status": 200,
        "outcome": "delivered",
        "apns_id": "A-1",
    }
    await node.node.stores.calls.append_timeline(call_id, [old])
    await node.node.stores.push_log.record_last_push("bob", "b-ipad", {**old, "call_id": call_id})
    await register(node, "bob", "b-ipad")

    timeline = (await ops_get(node, f"/v1/ops/calls/{call_id}")).json()["timeline"]
    [push] = [e for e in timeline if e.get("apns_id") == "A-1"]
    assert push["outcome"] == "accepted"
    [ipad] = (await ops_get(node, "/v1/ops/devices/bob")).json()["devices"]
    assert ipad["last_push"]["outcome"] == "accepted"
    summary = (await ops_get(node, "/v1/ops/summary")).json()
    assert "delivered" not in summary["push_results"]
