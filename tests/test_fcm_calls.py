"""Calls that ring Android phones, end to end: a real node and Redis, the FCM sender's
real HTTP client (httpx, google-auth's token exchange) to the FCM simulator serving on
loopback, in plain HTTP and over TLS (FCM_CA_FILE)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from apnsim import APNsSimulator
from fcmsim import ErrorCode, Fault, FCMSimulator, RecordedMessage, new_token
from simtls import generate_tls_material
from tests.conftest import BUNDLE, RunningNode, register
from tests.test_call_pushes import socket_dies

pytestmark = pytest.mark.on_cluster_too

Pushing = tuple[RunningNode, FCMSimulator]


@pytest.fixture
async def pushing(node_factory: Any, fcm: tuple[FCMSimulator, dict[str, str]]) -> Pushing:
    sim, settings = fcm
    return await node_factory(**settings), sim


async def register_android(node: RunningNode, user: str, device: str, token: str) -> dict[str, Any]:
    response = await node.http().put(
        f"/v1/devices/{device}",
        json={"platform": "android", "fcm_token": token},
        headers={"Authorization": f"Bearer {node.auth.mint(user, 'device')}"},
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def messages_for(sim: FCMSimulator, call_id: str, kind: str = "call.incoming", count: int = 1) -> list[Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [m for m in answered(sim, call_id, kind) if m.status == 200]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {count} {kind} message(s) for {call_id}: {[m.view() for m in sim.messages]}")


def answered(sim: FCMSimulator, call_id: str, kind: str | None = None) -> list[RecordedMessage]:
    return [
        m
        for m in sim.messages
        if m.status is not None and m.data.get("call_id") == call_id and (kind is None or m.data.get("type") == kind)
    ]


async def push_entries(node: RunningNode, call_id: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [
            e
            for e in await node.node.stores.calls.timeline(call_id)
            if e["event"] == "push" and all(e.get(k) == v for k, v in fields.items())
        ]
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} push entries {fields} on {call_id}")


async def test_registration_takes_platform_and_fcm_token_and_refuses_mixtures(node: RunningNode) -> None:
    token = new_token()
    body = await register_android(node, "bob", "b-pixel", token)
    assert body["platform"] == "android" and body["fcm_token"] == token and body["voip_token"] is None
    headers = {"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    listed = (await node.http().get("/v1/devices", headers=headers)).json()["devices"]
    assert [(d["device_id"], d["platform"], d["fcm_token"]) for d in listed] == [("b-pixel", "android", token)]
    for bad in (
        {"fcm_token": token},  # iOS is the default: an FCM token has no place there
        {"platform": "ios", "fcm_token": token},
        {"platform": "android", "fcm_token": token, "voip_token": "ab" * 32},
        {"platform": "android", "fcm_token": token, "apns_environment": "sandbox"},
        {"platform": "android", "fcm_token": "short"},
        {"platform": "android", "fcm_token": "not a token at all, spaces and all" * 2},
        {"platform": "windows"},
    ):
        response = await node.http().put("/v1/devices/b-other", json=bad, headers=headers)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "validation_error"


async def test_android_invite_is_a_high_priority_data_message(pushing: Pushing) -> None:
    node, sim = pushing
    device = sim.add_device()
    await register_android(node, "bob", "b-pixel", device.token)
    # The shown name is the token's (issue 14, item 1), as in test_call_pushes.
    caller = await node.device("alice", "a1", name="Alice A.")
    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]

    [message] = await messages_for(sim, call_id)
    body = message.body["message"]
    assert set(body) == {"token", "data", "android"}  # data only: no notification block
    assert body["token"] == device.token
    data = body["data"]
    assert set(data) == {"type", "call_id", "caller", "sent_at", "expires_at", "status_url"}
    assert all(isinstance(value, str) for value in data.values())
    assert data["type"] == "call.incoming" and data["call_id"] == call_id
    assert orjson.loads(data["caller"]) == {"id": "alice", "display_name": "Alice A."}
    assert data["expires_at"] == str(started["ring_deadline"])
    assert int(data["sent_at"]) <= int(data["expires_at"])
    android = body["android"]
    assert android["priority"] == "high" and android["collapse_key"] == call_id
    # ttl: the whole seconds left until the ring deadline when the message left.
    ttl = int(android["ttl"].removesuffix("s"))
    assert 0 < ttl <= (started["ring_deadline"] - int(data["sent_at"])) // 1000
    assert [d.message.data["type"] for d in device.inbox] == ["call.incoming"]

    response = await node.http().get(data["status_url"])
    assert response.status_code == 200 and response.json()["state"] == "ringing"

    [entry] = await push_entries(node, call_id, 1)
    assert entry["platform"] == "android" and entry["message_id"] == message.name
    assert entry["outcome"] == "accepted" and entry["status"] == 200 and entry["kind"] == "invite"
    assert "apns_id" not in entry
    labels = {"platform": "android", "app": "test-project", "kind": "invite", "outcome": "accepted", "reason": ""}
    assert (REGISTRY.get_sample_value("voip_pushes_total", labels) or 0) >= 1


async def test_offline_android_phone_wakes_to_the_cancellation_not_the_invite(pushing: Pushing) -> None:
    node, sim = pushing
    device = sim.add_device(online=False)
    await register_android(node, "bob", "b-pixel", device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await messages_for(sim, call_id)
    assert [s.message.data["type"] for s in device.pending] == ["call.incoming"]  # FCM holds it

    await caller.request({"type": "call.hangup", "call_id": call_id})
    [cancel] = await messages_for(sim, call_id, "call.cancelled")
    assert cancel.data["reason"] == "remote_ended" and set(cancel.data) == {"type", "call_id", "reason", "sent_at"}
    assert cancel.android["collapse_key"] == call_id and cancel.android["priority"] == "high"
    await push_entries(node, call_id, 1, kind="cancel", outcome="accepted")

    # One message per collapse key: the cancellation displaced the stored invite.
    sim.set_online(device.token, True)
    assert [d.message.data["type"] for d in device.inbox] == ["call.cancelled"]
    assert [d.cause.value for d in device.dropped] == ["displaced"]


async def test_hang_up_reaches_the_android_phone_whose_socket_died(pushing: Pushing) -> None:
    node, sim = pushing
    device = sim.add_device()
    await register_android(node, "bob", "b-pixel", device.token)
    caller = await node.device("alice", "a1")
    callee = await node.device("bob", "b-pixel")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await callee.expect("call.incoming", call_id=call_id)
    await messages_for(sim, call_id)  # answered before it left, the invite would be called off
    assert (await callee.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
    await caller.expect("call.answered", call_id=call_id)
    await socket_dies(node, callee)

    assert (await caller.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    [ended] = await messages_for(sim, call_id, "call.ended")
    assert ended.data["reason"] == "remote_ended" and ended.android["collapse_key"] == call_id
    assert [d.message.data["type"] for d in device.inbox] == ["call.incoming", "call.ended"]
    await push_entries(node, call_id, 1, kind="ended", outcome="accepted", platform="android")


async def test_an_unregistered_token_is_dropped_and_the_device_told(pushing: Pushing) -> None:
    node, sim = pushing
    device = sim.add_device()
    await register_android(node, "bob", "b-pixel", device.token)
    connected = await node.device("bob", "b-pixel")
    sim.uninstall(device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    [entry] = await push_entries(node, call_id, 1, kind="invite")
    assert entry["status"] == 404 and entry["reason"] == "UNREGISTERED" and entry["outcome"] == "token_invalid"
    reregister = await connected.expect("device.reregister")
    assert reregister["reason"] == "UNREGISTERED" and reregister["device_id"] == "b-pixel"
    record = await node.node.stores.devices.get("bob", "b-pixel")
    assert record is not None and record["fcm_token"] is None and record["token_dropped_at"] > 0
    token_entries = [e for e in await node.node.stores.calls.timeline(call_id) if e["event"] == "token"]
    assert token_entries[0]["dropped"] is True and token_entries[0]["platform"] == "android"
    assert len(answered(sim, call_id)) == 1  # a 404 is final: never retried


async def test_a_token_fcm_calls_invalid_is_dropped(
    node_factory: Any, fcm: tuple[FCMSimulator, dict[str, str]]
) -> None:
    sim, settings = fcm
    sim.strict_tokens = True  # FCM never issued this token: 400 INVALID_ARGUMENT on message.token
    node = await node_factory(**settings)
    await register_android(node, "bob", "b-pixel", new_token())
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    [entry] = await push_entries(node, call_id, 1, kind="invite")
    assert entry["status"] == 400 and entry["reason"] == "INVALID_ARGUMENT" and entry["outcome"] == "token_invalid"
    deadline = time.monotonic() + 5
    while (record := await node.node.stores.devices.get("bob", "b-pixel")) and record["fcm_token"] is not None:
        assert time.monotonic() < deadline, "the token was not dropped"
        await asyncio.sleep(0.02)


async def test_a_token_registered_again_after_the_refusal_is_kept(pushing: Pushing) -> None:
    """The registration-time rule of APNs's 410: FCM names no time, so the refused
    request's own time stands in for it."""
    node, _ = pushing
    token = new_token()
    await register_android(node, "bob", "b-pixel", token)
    record = await node.node.stores.devices.get("bob", "b-pixel")
    assert record is not None
    registered = record["token_registered_at"]
    devices = node.node.stores.devices
    assert not await devices.drop_voip_token("bob", "b-pixel", token, registered, field="fcm_token")
    assert await devices.drop_voip_token("bob", "b-pixel", token, registered + 1, field="fcm_token")
    record = await devices.get("bob", "b-pixel")
    assert record is not None and record["fcm_token"] is None


async def test_503_is_retried_within_the_ring_deadline_and_sent_once(pushing: Pushing) -> None:
    node, sim = pushing
    device = sim.add_device()
    sim.inject(Fault.unavailable(), device.token, times=2)
    await register_android(node, "bob", "b-pixel", device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    [entry] = await push_entries(node, call_id, 1, kind="invite")
    assert entry["outcome"] == "accepted" and entry["attempts"] == 3 and entry["status"] == 200
    assert [m.status for m in answered(sim, call_id)] == [503, 503, 200]
    assert [m.error for m in answered(sim, call_id)][:2] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert len(device.inbox) == 1  # the phone rang once


async def test_no_retry_after_the_ring_deadline(node_factory: Any, fcm: tuple[FCMSimulator, dict[str, str]]) -> None:
    sim, settings = fcm
    node = await node_factory(ring_timeout=1.5, **settings)
    device = sim.add_device()
    quota = sim.inject(Fault.quota_exceeded(), device.token, times=None)  # 429 until removed
    await register_android(node, "bob", "b-pixel", device.token)
    caller = await node.device("alice", "a1")
    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]

    [entry] = await push_entries(node, call_id, 1, kind="invite")
    assert entry["outcome"] == "expired" and entry["status"] == 429 and entry["reason"] == "QUOTA_EXCEEDED"
    tries = answered(sim, call_id, "call.incoming")
    assert len(tries) == entry["attempts"] >= 2
    # Every retry was sent before the deadline; the last may be written just before it and
    # reach the simulator just after (as with APNs, tests/push/test_retries.py), so only the
    # ones before it are known to have arrived in time.
    assert all(m.received_at * 1000 < started["ring_deadline"] for m in tries[:-1])
    assert device.inbox == []
    sim.remove_fault(quota)  # the missed call's cancellation may now go through
    await push_entries(node, call_id, 1, kind="cancel", outcome="accepted")
    # Nothing more came for the invite once it expired, the cancellation went after it.
    assert len(answered(sim, call_id, "call.incoming")) == len(tries)


async def test_a_user_with_an_iphone_and_an_android_phone(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]], fcm: tuple[FCMSimulator, dict[str, str]]
) -> None:
    (apns_sim, apns_settings), (fcm_sim, fcm_settings) = apns, fcm
    node = await node_factory(**apns_settings, **fcm_settings)
    iphone = apns_sim.add_device(f"{BUNDLE}.voip", online=False)
    pixel = fcm_sim.add_device(online=False)
    await register(node, "bob", "b-iphone", voip_token=iphone.token)
    await register_android(node, "bob", "b-pixel", pixel.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    invites = await push_entries(node, call_id, 2, kind="invite")
    assert {(e["device"], e.get("platform", "ios"), e["outcome"]) for e in invites} == {
        ("b-iphone", "ios", "accepted"),
        ("b-pixel", "android", "accepted"),
    }
    await caller.request({"type": "call.hangup", "call_id": call_id})
    cancels = await push_entries(node, call_id, 2, kind="cancel")
    assert {e["device"] for e in cancels} == {"b-iphone", "b-pixel"}
    [fcm_cancel] = await messages_for(fcm_sim, call_id, "call.cancelled")
    assert fcm_cancel.token == pixel.token
    apns_cancels = [r for r in apns_sim.requests if r.body and orjson.loads(r.body).get("type") == "call.cancelled"]
    assert [r.token for r in apns_cancels] == [iphone.token]
    # Neither platform got the other's token.
    assert all(m.token == pixel.token for m in fcm_sim.messages)
    assert {r.token for r in apns_sim.requests if r.token} == {iphone.token}


async def test_an_android_call_over_tls_trusts_fcm_ca_file(
    node_factory: Any, fcm_tls: tuple[FCMSimulator, dict[str, str]]
) -> None:
    """As with Google: the access token and the message both over https, each server's
    certificate checked against FCM_CA_FILE."""
    sim, settings = fcm_tls
    assert settings["fcm_endpoint"].startswith("https://") and settings["fcm_ca_file"] == sim.ca_file
    node = await node_factory(**settings)
    device = sim.add_device()
    await register_android(node, "bob", "b-pixel", device.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    [message] = await messages_for(sim, call_id)
    [entry] = await push_entries(node, call_id, 1, kind="invite")
    assert entry["outcome"] == "accepted" and entry["message_id"] == message.name and entry["platform"] == "android"
    assert sim.token_requests == 1 and sim.accounts.issued == 1  # the token came over TLS too
    assert [d.message.data["call_id"] for d in device.inbox] == [call_id]
    ready = await node.http().get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["fcm"] == "ok"


@pytest.mark.parametrize("trust", ["another CA", "the default CAs"])
async def test_a_node_that_does_not_trust_fcms_certificate_still_rings_the_iphone(
    trust: str,
    node_factory: Any,
    apns: tuple[APNsSimulator, dict[str, str]],
    fcm_tls: tuple[FCMSimulator, dict[str, str]],
    tmp_path: Path,
) -> None:
    """FCM_CA_FILE names a CA that did not sign the simulator's certificate, or is unset
    (the default CAs): the Android push fails at once, with a line that says why; the
    call goes on for the user's iPhone, and the node with it."""
    (apns_sim, apns_settings), (fcm_sim, fcm_settings) = apns, fcm_tls
    ca_file = str(generate_tls_material(tmp_path / "other", issuer="other").ca_file) if trust == "another CA" else ""
    node = await node_factory(**apns_settings, **{**fcm_settings, "fcm_ca_file": ca_file})
    iphone = apns_sim.add_device(f"{BUNDLE}.voip")
    pixel = fcm_sim.add_device()
    await register(node, "bob", "b-iphone", voip_token=iphone.token)
    await register_android(node, "bob", "b-pixel", pixel.token)
    caller = await node.device("alice", "a1")
    with capture_logs() as logs:
        call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
        invites = {e["device"]: e for e in await push_entries(node, call_id, 2, kind="invite")}

    assert invites["b-iphone"]["outcome"] == "accepted"
    android = invites["b-pixel"]
    assert android["outcome"] == "failed" and android["reason"] == "CertificateNotTrusted"
    assert android["attempts"] == 0 and android["status"] is None
    trusted = f"FCM_CA_FILE={ca_file}" if ca_file else "the default CAs: no FCM_CA_FILE"
    refusal = (
        f"the TLS certificate of the key's token_uri, {fcm_sim.token_uri}, is not trusted: "
        f"unable to get local issuer certificate (trusting {trusted})"
    )
    assert android["likely_cause"] == f"no OAuth2 access token: {refusal}"
    [line] = [entry for entry in logs if entry["event"] == "fcm.certificate_not_trusted"]
    assert line["log_level"] == "warning" and line["cause"] == refusal
    assert fcm_sim.token_requests == 0 and fcm_sim.messages == [] and pixel.inbox == []
    ready = await node.http().get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["fcm"] == "failed: AccessTokenError"

    # The call goes on: the iPhone answers it.
    callee = await node.device("bob", "b-iphone")
    assert (await callee.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
    await caller.expect("call.answered", call_id=call_id)
    assert (await caller.request({"type": "call.hangup", "call_id": call_id}))["type"] == "ack"
    await callee.expect("call.ended", call_id=call_id)


async def test_fault_injection_over_the_simulators_http_api(fcm: tuple[FCMSimulator, dict[str, str]]) -> None:
    """The simulator's /sim/ API, for a test in another process: a phone, a fault, the records."""
    import httpx

    sim, _ = fcm
    async with httpx.AsyncClient(base_url=sim.endpoint) as client:
        phone = (await client.post("/sim/devices", json={"online": False})).json()
        assert (
            await client.post("/sim/faults", json={"code": ErrorCode.INTERNAL.value, "times": 1})
        ).status_code == 201
        assert sim.faults.entries[0].fault.code is ErrorCode.INTERNAL
        assert (await client.post(f"/sim/devices/{phone['token']}/online")).json()["online"] is True
        assert (await client.delete("/sim/faults")).status_code == 200 and sim.faults.entries == []
        assert (await client.get("/sim/messages")).json() == {"messages": []}
