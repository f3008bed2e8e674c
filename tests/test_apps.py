"""Several iOS apps (issue 14, item 6): each app its own APNs key, chosen by the device's
bundle id, on a real node against the APNs simulator whose keys are each restricted to
their own app (a push for another app is 400 TopicDisallowed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from apnsim import APNsSimulator, RecordedRequest, SigningKey
from tests.conftest import RunningNode, register, stop_nodes
from voip import banner
from voip.push import APNsApps, APNsConfig, APNsNotifier, Caller, Outcome, Push, PushKind, voip_invite

ALPHA, BETA = "com.example.alpha", "com.example.beta"
KEYS = {ALPHA: ("TEAMALPHA1", "KEYALPHA01"), BETA: ("TEAMBETA01", "KEYBETA001")}


class TwoApps:
    def __init__(self, sim: APNsSimulator, keys: dict[str, SigningKey], settings: dict[str, Any]) -> None:
        self.sim, self.keys, self.settings = sim, keys, settings


@pytest.fixture
async def two_apps(tmp_path: Path, running_nodes: list[RunningNode]) -> AsyncIterator[TwoApps]:
    """A simulator with one key per app, each allowed its own bundle only, and the
    APNS_APPS settings that name them. The nodes stop before the simulator does."""
    async with APNsSimulator(tmp_path / "apns") as sim:
        keys: dict[str, SigningKey] = {}
        table: dict[str, dict[str, str]] = {}
        for bundle, (team, key_id) in KEYS.items():
            keys[bundle] = key = sim.create_key(team, key_id, bundle_ids=[bundle])
            key_file = tmp_path / f"AuthKey_{key_id}.p8"
            key_file.write_text(key.private_pem)
            table[bundle] = {"key_file": str(key_file), "key_id": key_id, "team_id": team}
        yield TwoApps(
            sim,
            keys,
            {"apns_apps": table, "apns_endpoint": sim.endpoint, "apns_ca_file": str(sim.ca_file)},
        )
        await stop_nodes(running_nodes)


async def answered(sim: APNsSimulator, call_id: str, kind: str, count: int) -> list[RecordedRequest]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in sim.requests if r.answered and r.body and orjson.loads(r.body).get("call_id") == call_id]
        of_kind = [r for r in found if orjson.loads(r.body).get("type") == kind]
        if len(of_kind) >= count:
            return of_kind
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {count} {kind} for {call_id}: {[(r.topic, r.status, r.reason) for r in sim.requests]}")


def pushes_counted(app: str, kind: str) -> float:
    labels = {"platform": "ios", "app": app, "kind": kind, "outcome": "accepted", "reason": ""}
    return REGISTRY.get_sample_value("voip_pushes_total", labels) or 0.0


async def test_each_apps_devices_get_pushes_signed_with_their_own_key(node_factory: Any, two_apps: TwoApps) -> None:
    node: RunningNode = await node_factory(**two_apps.settings)
    sim = two_apps.sim
    phones = {bundle: sim.add_device(f"{bundle}.voip", environment="sandbox", online=False) for bundle in KEYS}
    await register(node, "bob", "b-alpha", voip_token=phones[ALPHA].token, bundle_id=ALPHA)
    await register(node, "bob", "b-beta", voip_token=phones[BETA].token, bundle_id=BETA)
    before = {bundle: (pushes_counted(bundle, "invite"), pushes_counted(bundle, "cancel")) for bundle in KEYS}
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    invites = await answered(sim, call_id, "call.incoming", 2)
    # Hung up while both phones sleep: each cancellation goes where its invite went, with
    # the same app's key (the invite's address kept its bundle).
    await caller.request({"type": "call.hangup", "call_id": call_id})
    cancels = await answered(sim, call_id, "call.cancelled", 2)

    for request in invites + cancels:
        bundle = request.topic.removesuffix(".voip") if request.topic else None
        assert bundle in KEYS, request.topic
        assert request.status == 200, (request.topic, request.reason)
        assert (request.team_id, request.key_id) == KEYS[bundle]
    assert sorted(r.topic for r in invites) == sorted(r.topic for r in cancels) == [f"{ALPHA}.voip", f"{BETA}.voip"]
    assert all(
        phone.pending is not None and phone.pending.payload["type"] == "call.cancelled" for phone in phones.values()
    )
    for bundle in KEYS:
        assert pushes_counted(bundle, "invite") == before[bundle][0] + 1
        assert pushes_counted(bundle, "cancel") == before[bundle][1] + 1


async def test_a_push_for_one_app_signed_with_the_others_key_is_refused(two_apps: TwoApps) -> None:
    sim = two_apps.sim
    phone = sim.add_device(f"{BETA}.voip", environment="sandbox")
    alpha_key = two_apps.keys[ALPHA]
    # App B's push, signed with app A's key, as a node would if it chose the key by anything
    # but the device's bundle.
    crossed = APNsNotifier(
        APNsConfig(
            bundle_id=BETA,
            key_id=alpha_key.key_id,
            team_id=alpha_key.team_id,
            key_pem=alpha_key.private_pem,
            endpoint=sim.endpoint,
            ca_file=str(sim.ca_file),
        )
    )
    request = voip_invite(
        bundle_id=BETA,
        device_token=phone.token,
        environment="sandbox",
        call_id=str(uuid.uuid4()),
        caller=Caller(id="alice", display_name="Alice"),
        ring_deadline=time.time() + 5,
        status_url="https://voip.example.com/v1/calls/c/status?cap=x",
    )
    try:
        result = await crossed.send(request)
    finally:
        await crossed.aclose()

    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, 400, "TopicDisallowed")
    assert result.app == BETA
    [recorded] = sim.requests
    assert (recorded.key_id, recorded.topic) == (KEYS[ALPHA][1], f"{BETA}.voip")
    assert phone.pending is None and not phone.inbox


async def test_a_bundle_the_node_has_no_key_for_is_422_unknown_app(node_factory: Any, two_apps: TwoApps) -> None:
    node: RunningNode = await node_factory(**two_apps.settings)
    client = node.http()
    headers = {"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    token = uuid.uuid4().hex * 2

    unknown = await client.put(
        "/v1/devices/phone", json={"voip_token": token, "bundle_id": "com.example.gamma"}, headers=headers
    )
    assert unknown.status_code == 422 and unknown.headers["content-type"] == "application/json"
    assert unknown.json()["error"] == "unknown_app" and unknown.json()["bundle_id"] == "com.example.gamma"
    # Two apps and no APNS_BUNDLE_ID among them: a device must say which it is.
    unnamed = await client.put("/v1/devices/phone", json={"voip_token": token}, headers=headers)
    assert unnamed.status_code == 422 and unnamed.json()["error"] == "unknown_app"
    assert unnamed.json()["bundle_id"] is None
    assert await node.node.stores.devices.get("bob", "phone") is None
    # The answer is the Error of the OpenAPI schema that the node serves for this route.
    spec = (await client.get("/openapi.json")).json()
    documented = spec["paths"]["/v1/devices/{device_id}"]["put"]["responses"]["422"]
    assert "unknown_app" in documented["description"]
    error = spec["components"]["schemas"]["Error"]
    assert documented["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error"
    assert set(unknown.json()) <= set(error["properties"]) and set(error["required"]) <= set(unknown.json())

    assert (
        await client.put("/v1/devices/phone", json={"voip_token": token, "bundle_id": BETA}, headers=headers)
    ).status_code == 201
    android = await client.put(
        "/v1/devices/pixel", json={"platform": "android", "fcm_token": "f" * 40}, headers=headers
    )
    assert android.status_code == 201  # an Android device has no bundle to check


async def test_the_single_app_settings_are_one_app_beside_apns_apps(
    node_factory: Any, two_apps: TwoApps, tmp_path: Path
) -> None:
    """APNS_KEY_FILE and APNS_BUNDLE_ID as before, plus APNS_APPS: a device with no bundle
    id is APNS_BUNDLE_ID's, and pushes for it are signed with APNS_KEY_FILE's key."""
    sim = two_apps.sim
    alpha = two_apps.settings["apns_apps"][ALPHA]
    settings = {
        **two_apps.settings,
        "apns_apps": {BETA: two_apps.settings["apns_apps"][BETA]},
        "apns_key_file": alpha["key_file"],
        "apns_key_id": alpha["key_id"],
        "apns_team_id": alpha["team_id"],
        "apns_bundle_id": ALPHA,
    }
    node: RunningNode = await node_factory(**settings)
    assert node.node.apps is not None and node.node.apps.configured == [ALPHA, BETA]
    # Where pushes go, in the start-up banner: every app's topic.
    assert f"topic {ALPHA}.voip, {BETA}.voip" in banner.text(node.node, node.base_url, private_redis=False)
    phones = {bundle: sim.add_device(f"{bundle}.voip", environment="sandbox") for bundle in KEYS}
    await register(node, "bob", "b-old", voip_token=phones[ALPHA].token)  # no bundle_id: APNS_BUNDLE_ID's
    await register(node, "bob", "b-beta", voip_token=phones[BETA].token, bundle_id=BETA)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    invites = await answered(sim, call_id, "call.incoming", 2)
    assert {(r.topic, r.key_id, r.status) for r in invites} == {
        (f"{ALPHA}.voip", KEYS[ALPHA][1], 200),
        (f"{BETA}.voip", KEYS[BETA][1], 200),
    }


async def test_without_credentials_the_embedded_simulator_serves_every_bundle(node: RunningNode) -> None:
    assert node.node.apns_simulator is not None and node.node.apps is not None
    sim = node.node.apns_simulator
    phone = sim.add_device("org.example.anything.voip", environment="sandbox")
    await register(node, "bob", "b-phone", voip_token=phone.token, bundle_id="org.example.anything")
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]

    [invite] = await answered(sim, call_id, "call.incoming", 1)
    assert invite.topic == "org.example.anything.voip" and invite.status == 200
    assert pushes_counted("org.example.anything", "invite") >= 1


async def test_a_push_for_an_app_the_node_no_longer_serves_is_refused_not_sent() -> None:
    """A call pushed by a node that had app B's key, cancelled on one that has not."""
    apps = APNsApps({}, default=None)
    assert not apps.serves(BETA) and not apps.serves(None)
    assert apps.address({"voip_token": "ab" * 32, "bundle_id": BETA}, PushKind.INVITE) is None
    push = Push(
        PushKind.CANCEL,
        "call-1",
        {"token": "ab" * 32, "environment": "sandbox", "bundle_id": BETA},
        deadline=time.time() + 5,
        reason="remote_ended",
    )

    result = await apps.notify(push)

    assert (result.outcome, result.reason, result.attempts, result.app) == (
        Outcome.REJECTED,
        "AppNotConfigured",
        0,
        BETA,
    )
