"""The call-status endpoint: a verdict for every state, for every kind of asker."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.conftest import DeviceClient, RunningNode, register

pytestmark = pytest.mark.on_cluster_too


def bearer(node: RunningNode, user: str, role: str = "device") -> dict[str, str]:
    return {"Authorization": f"Bearer {node.auth.mint(user, role)}"}  # type: ignore[arg-type]


async def status(node: RunningNode, call_id: str, user: str = "bob", **params: str) -> tuple[int, dict[str, Any]]:
    response = await node.http().get(f"/v1/calls/{call_id}/status", params=params, headers=bearer(node, user))
    return response.status_code, response.json()


async def ringing_call(node: RunningNode) -> tuple[str, DeviceClient, DeviceClient, DeviceClient]:
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    ipad = await node.device("bob", "b2")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    return call_id, caller, phone, ipad


async def test_ringing_says_keep_ringing(node: RunningNode) -> None:
    call_id, *_ = await ringing_call(node)
    code, body = await status(node, call_id, device_id="b1")
    assert code == 200
    assert body["state"] == "ringing" and body["end_call"] is False and body["reason"] is None
    assert abs(body["server_time"] - time.time() * 1000) < 5000
    assert "ended_at" not in body


async def test_answered_keeps_the_answering_device_and_ends_the_others(node: RunningNode) -> None:
    call_id, _caller, phone, _ = await ringing_call(node)
    await phone.request({"type": "call.answer", "call_id": call_id})
    _, on_phone = await status(node, call_id, device_id="b1")
    assert on_phone["end_call"] is False and on_phone["answered_by_device"] == "b1"
    _, on_ipad = await status(node, call_id, device_id="b2")
    assert on_ipad["end_call"] is True and on_ipad["reason"] == "answered_elsewhere"
    _, on_caller = await status(node, call_id, user="alice", device_id="a1")
    assert on_caller["end_call"] is False


@pytest.mark.parametrize(
    ("who", "action", "state", "reason"),
    [
        ("caller", "call.hangup", "cancelled", "remote_ended"),
        ("phone", "call.decline", "declined", "declined_elsewhere"),
    ],
)
async def test_final_states_end_the_call(node: RunningNode, who: str, action: str, state: str, reason: str) -> None:
    call_id, caller, phone, _ = await ringing_call(node)
    actor = caller if who == "caller" else phone
    await actor.request({"type": action, "call_id": call_id})
    code, body = await status(node, call_id, device_id="b2")
    assert code == 200
    assert (body["state"], body["end_call"], body["reason"]) == (state, True, reason)
    assert body["ended_at"] <= body["server_time"]


async def test_ended_after_answer_is_remote_ended(node: RunningNode) -> None:
    call_id, caller, phone, _ = await ringing_call(node)
    await phone.request({"type": "call.answer", "call_id": call_id})
    await caller.request({"type": "call.hangup", "call_id": call_id})
    _, body = await status(node, call_id, device_id="b1")
    assert (body["state"], body["end_call"], body["reason"]) == ("ended", True, "remote_ended")


async def test_missed_and_failed(node_factory: Any) -> None:
    node = await node_factory(ring_timeout=0.3)
    call_id, _, phone, _ = await ringing_call(node)
    await phone.expect("call.missed", call_id=call_id, timeout=3)
    _, body = await status(node, call_id, device_id="b1")
    assert (body["state"], body["end_call"], body["reason"]) == ("missed", True, "unanswered")

    from voip.calls import Action

    # Created where calls ring long (each call keeps its creator's deadline): the failure,
    # not a 0.3 s timeout on a loaded machine, is what ends it.
    patient = await node_factory(ring_timeout=30)
    failing = (await (await patient.device("carol", "c1")).request({"type": "call.start", "callee": "bob"}))["call_id"]
    await node.node.stores.calls.transition(failing, Action.FAIL, node="test")
    _, body = await status(node, failing, device_id="b1")
    assert (body["state"], body["end_call"], body["reason"]) == ("failed", True, "failed")


async def test_a_due_timeout_not_yet_fired_already_says_missed(node_factory: Any) -> None:
    # Every node's timeout poller is slow here; the endpoint must not wait for it.
    node = await node_factory(ring_timeout=0.2)
    await node.node.timeouts.stop()
    call_id, *_ = await ringing_call(node)
    await asyncio.sleep(0.3)
    _, body = await status(node, call_id, device_id="b1")
    assert (body["state"], body["end_call"], body["reason"]) == ("missed", True, "unanswered")
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.state == "ringing"


async def test_strangers_learn_nothing(node: RunningNode) -> None:
    call_id, *_ = await ringing_call(node)
    stranger = await status(node, call_id, user="mallory")
    unknown = await status(node, str(uuid.uuid4()), user="mallory")
    assert stranger[0] == unknown[0] == 404
    for body in (stranger[1], unknown[1]):
        assert body["end_call"] is True and body["reason"] == "unknown_call"
        assert set(body) == {"call_id", "end_call", "reason", "server_time"}
    # And the stranger's question left no trace on the call.
    assert not [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]


async def test_a_bearer_check_without_a_device_never_ends_a_call_live_for_that_user(node: RunningNode) -> None:
    # A token names a user, not a device: the answer is the user's.
    call_id, caller, phone, _ = await ringing_call(node)
    for user in ("alice", "bob"):
        code, body = await status(node, call_id, user=user)
        assert code == 200 and (body["state"], body["end_call"], body["reason"]) == ("ringing", False, None)
    await phone.request({"type": "call.answer", "call_id": call_id})
    for user in ("alice", "bob"):
        code, body = await status(node, call_id, user=user)
        assert code == 200
        assert (body["state"], body["end_call"], body["reason"]) == ("answered", False, None), user
        assert body["answered_by_device"] == "b1"
    # A device of bob's that did not answer is still told: answered elsewhere.
    _, on_ipad = await status(node, call_id, device_id="b2")
    assert (on_ipad["end_call"], on_ipad["reason"]) == (True, "answered_elsewhere")
    # Once over, each side in its own words.
    await caller.request({"type": "call.hangup", "call_id": call_id})
    for user in ("alice", "bob"):
        _, body = await status(node, call_id, user=user)
        assert (body["state"], body["end_call"], body["reason"]) == ("ended", True, "remote_ended")
    # A late invite to the device that did not answer: it was answered elsewhere, not ended
    # by the other side (bench --ghosts found it told remote_ended).
    _, on_ipad = await status(node, call_id, device_id="b2")
    assert (on_ipad["state"], on_ipad["end_call"], on_ipad["reason"]) == ("ended", True, "answered_elsewhere")
    checks = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]
    assert [(c["party"], c.get("device")) for c in checks] == [
        ("caller", None),
        ("callee", None),
        ("caller", None),
        ("callee", None),
        ("callee", "b2"),
        ("caller", None),
        ("callee", None),
        ("callee", "b2"),
    ]


async def test_a_declined_call_reads_in_each_sides_words_without_a_device(node: RunningNode) -> None:
    call_id, _, phone, _ = await ringing_call(node)
    await phone.request({"type": "call.decline", "call_id": call_id})
    assert (await status(node, call_id, user="alice"))[1]["reason"] == "remote_ended"
    assert (await status(node, call_id, user="alice", device_id="a1"))[1]["reason"] == "remote_ended"
    assert (await status(node, call_id, user="bob"))[1]["reason"] == "declined_elsewhere"


async def test_a_device_that_is_not_the_askers_in_this_call_is_refused(node: RunningNode) -> None:
    call_id, _caller, phone, _ = await ringing_call(node)
    await node.device("alice", "a2")  # alice's, but not the device that placed the call
    await phone.request({"type": "call.answer", "call_id": call_id})
    await register(node, "bob", "b-later")  # bob's, registered after the call was offered
    for user, device_id in (("alice", "b1"), ("alice", "a2"), ("bob", "a1"), ("bob", "b-later")):
        code, body = await status(node, call_id, user=user, device_id=device_id)
        assert code == 403, (user, device_id)
        assert body == {"error": "forbidden", "message": "device_id is not one of your devices in this call"}
    # A stranger naming a device still learns nothing: the same 404 as an unknown call.
    code, body = await status(node, call_id, user="mallory", device_id="b1")
    assert code == 404 and body["reason"] == "unknown_call"
    # None of them was recorded as a device's check.
    assert not [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]
    # The devices that are theirs in this call still get their own verdicts.
    assert (await status(node, call_id, user="alice", device_id="a1"))[1]["end_call"] is False
    assert (await status(node, call_id, device_id="b1"))[1]["end_call"] is False
    assert (await status(node, call_id, device_id="b2"))[1]["reason"] == "answered_elsewhere"


async def test_a_registered_device_the_call_was_offered_to_may_ask_by_bearer(node: RunningNode) -> None:
    await register(node, "bob", "b-asleep")  # no socket: offered the call by push only
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    code, body = await status(node, call_id, device_id="b-asleep")
    assert code == 200 and (body["state"], body["end_call"]) == ("ringing", False)
    await caller.request({"type": "call.hangup", "call_id": call_id})
    code, body = await status(node, call_id, device_id="b-asleep")
    assert code == 200 and (body["end_call"], body["reason"]) == (True, "remote_ended")


async def test_unknown_and_malformed_ids_are_unknown_calls(node: RunningNode) -> None:
    code, body = await status(node, "not-a-uuid")
    assert code == 404 and body["reason"] == "unknown_call"


async def test_authentication_is_required(node: RunningNode) -> None:
    call_id, *_ = await ringing_call(node)
    client = node.http()
    assert (await client.get(f"/v1/calls/{call_id}/status")).status_code == 401
    bad = await client.get(f"/v1/calls/{call_id}/status", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
    expired = node.auth.mint("bob", "device", ttl=-10)
    response = await client.get(f"/v1/calls/{call_id}/status", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    operator = await client.get(f"/v1/calls/{call_id}/status", headers=bearer(node, "bob", "operator"))
    assert operator.status_code == 403


async def test_capability_opens_one_call_for_one_device(node: RunningNode) -> None:
    call_id, *_ = await ringing_call(node)
    other_call, *_ = await ringing_call(node)
    expires = int(time.time()) + 600
    cap = node.auth.capability(call_id, "b1", expires)
    client = node.http()
    ok = await client.get(f"/v1/calls/{call_id}/status", params={"cap": cap, "device_id": "b1"})
    assert ok.status_code == 200 and ok.json()["state"] == "ringing"
    # Upper-case, as CallKit prints it: still the same call.
    upper = await client.get(f"/v1/calls/{call_id.upper()}/status", params={"cap": cap, "device_id": "b1"})
    assert upper.status_code == 200
    for params, path_call in (
        ({"cap": cap, "device_id": "b2"}, call_id),  # another device
        ({"cap": cap, "device_id": "b1"}, other_call),  # another call
        ({"cap": cap[:-2] + "AA", "device_id": "b1"}, call_id),  # forged
        ({"cap": node.auth.capability(call_id, "b1", int(time.time()) - 1), "device_id": "b1"}, call_id),
        ({"cap": cap}, call_id),  # no device
    ):
        response = await client.get(f"/v1/calls/{path_call}/status", params=params)
        assert response.status_code == 401, params
    checks = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]
    assert [c["via"] for c in checks] == ["capability", "capability"]
    assert checks[0]["device"] == "b1" and checks[0]["state"] == "ringing"


async def test_polling_does_not_grow_the_timeline_without_bound(node: RunningNode) -> None:
    call_id, *_ = await ringing_call(node)
    for _ in range(60):
        assert (await status(node, call_id, device_id="b1"))[0] == 200
    checks = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "status_check"]
    assert len(checks) == 50
    assert await node.node.connections.client.hget(node.node.stores.keys.call(call_id), "status_checks") == b"60"


def test_call_ids_are_canonical_in_every_spelling() -> None:
    from voip.api import canonical_uuid

    call_id = str(uuid.uuid4())
    for spelling in (call_id, call_id.upper(), call_id.replace("-", ""), "{" + call_id + "}", "urn:uuid:" + call_id):
        assert canonical_uuid(spelling) == call_id
    for bad in ("", "not-a-uuid", call_id + "0", call_id[:-1] + "g"):
        assert canonical_uuid(bad) is None


async def test_percent_encoded_parameters_still_work(node: RunningNode) -> None:
    call_id, *_ = await ringing_call(node)
    cap = node.auth.capability(call_id, "b:1", int(time.time()) + 600)
    # "b:1" sent as b%3A1: the general parser takes over.
    response = await node.http().get(f"/v1/calls/{call_id}/status?device_id=b%3A1&cap={cap}")
    assert response.status_code == 200 and response.json()["state"] == "ringing"


async def test_answers_keep_their_exact_bytes(node: RunningNode) -> None:
    """The JSON an app parses, key order and omissions included."""
    call_id, caller, phone, _ = await ringing_call(node)

    async def raw(device_id: str = "b1") -> tuple[int, bytes, int]:
        response = await node.http().get(
            f"/v1/calls/{call_id}/status", params={"device_id": device_id}, headers=bearer(node, "bob")
        )
        return response.status_code, response.content, response.json()["server_time"]

    code, content, now = await raw()
    assert code == 200
    assert content == b'{"call_id":"%s","state":"ringing","end_call":false,"reason":null,"server_time":%d}' % (
        call_id.encode(),
        now,
    )
    await phone.request({"type": "call.answer", "call_id": call_id})
    _, content, now = await raw("b2")
    assert content == (
        b'{"call_id":"%s","state":"answered","end_call":true,"reason":"answered_elsewhere","server_time":%d,'
        b'"answered_by_device":"b1"}' % (call_id.encode(), now)
    )
    await caller.request({"type": "call.hangup", "call_id": call_id})
    ended_at = (await node.node.stores.calls.get(call_id)).ended_at  # type: ignore[union-attr]
    _, content, now = await raw()
    assert content == (
        b'{"call_id":"%s","state":"ended","end_call":true,"reason":"remote_ended","server_time":%d,'
        b'"answered_by_device":"b1","ended_at":%d}' % (call_id.encode(), now, ended_at)
    )
    unknown = str(uuid.uuid4())
    response = await node.http().get(f"/v1/calls/{unknown}/status", headers=bearer(node, "bob"))
    assert response.status_code == 404
    assert response.content == b'{"call_id":"%s","end_call":true,"reason":"unknown_call","server_time":%d}' % (
        unknown.encode(),
        response.json()["server_time"],
    )
