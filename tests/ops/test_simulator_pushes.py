"""`GET /v1/ops/simulator/pushes`: what the embedded APNs simulator received, on a node with
no APNs credentials; and the capability path tried by hand from a push's `status_url`."""

from __future__ import annotations

from typing import Any

import httpx

from apnsim import APNsSimulator
from apnsim.records import RecordedRequest
from tests.conftest import RunningNode, register
from tests.ops.conftest import ops_get, place_call

PATH = "/v1/ops/simulator/pushes"


def of_type(call_id: str, kind: str) -> Any:
    def matches(record: RecordedRequest) -> bool:
        payload = record.payload
        return (
            record.answered
            and isinstance(payload, dict)
            and payload.get("call_id") == call_id
            and payload.get("type") == kind
        )

    return matches


def simulator_of(node: RunningNode) -> APNsSimulator:
    simulator = node.node.apns_simulator
    assert simulator is not None, "a node with no APNs credentials pushes to its simulator"
    return simulator


async def test_pushes_show_payload_answer_and_delivery(node: RunningNode) -> None:
    simulator = simulator_of(node)
    token = (await register(node, "bob", "b-ipad"))["voip_token"]
    alice = await node.device("alice", "a-phone")
    call_id = await place_call(alice, "bob")
    await simulator.log.wait_for(of_type(call_id, "call.incoming"))

    body = (await ops_get(node, PATH)).json()
    assert body["simulator"] is True and "no real phone receives anything" in body["note"]
    assert body["endpoint"] == simulator.endpoint and body["received"] == 1
    [invite] = body["pushes"]
    assert invite["status"] == 200 and invite["reason"] is None
    assert invite["delivery"] == "delivered" and invite["stored"] is False  # an online simulated phone
    assert invite["device_token_prefix"] == token[:8] and token not in str(invite["headers"])
    assert invite["headers"]["apns-push-type"] == "voip"
    assert invite["headers"]["apns-topic"] == node.node.settings.apns_bundle_id + ".voip"
    assert invite["headers"]["apns-collapse-id"] == call_id
    payload = invite["payload"]
    assert payload["type"] == "call.incoming" and payload["call_id"] == call_id
    assert payload["status_url"].startswith(f"{node.base_url}/v1/calls/{call_id}/status?")

    # The capability path, by hand: the push's status_url answers with no token at all.
    async with httpx.AsyncClient() as client:
        ringing = (await client.get(payload["status_url"])).json()
        assert ringing["state"] == "ringing" and ringing["end_call"] is False
        await alice.request({"type": "call.hangup", "call_id": call_id})
        await simulator.log.wait_for(of_type(call_id, "call.cancelled"))
        # A late invite asks after the end: told to end the call, a late push caught.
        late = (await client.get(payload["status_url"])).json()
        assert late["end_call"] is True and late["reason"] == "remote_ended"
    # Two checks with bob's own token after the end: no push caused them.
    for _ in range(2):
        manual = await node.http().get(
            f"/v1/calls/{call_id}/status",
            params={"device_id": "b-ipad"},
            headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"},
        )
        assert manual.json()["end_call"] is True
    summary = (await ops_get(node, "/v1/ops/summary")).json()
    assert summary["late_pushes_caught"] == {"status_checks": 1, "calls": 1}

    newest = (await ops_get(node, PATH, limit=1)).json()
    assert newest["received"] == 2 and [p["payload"]["type"] for p in newest["pushes"]] == ["call.cancelled"]


async def test_an_offline_phone_stores_the_push_and_the_cancellation_displaces_it(node: RunningNode) -> None:
    simulator = simulator_of(node)
    token = (await register(node, "bob", "b-ipad"))["voip_token"]
    simulator.devices.add(node.node.settings.apns_bundle_id + ".voip", simulator.environment, token=token, online=False)
    alice = await node.device("alice", "a-phone")
    call_id = await place_call(alice, "bob")
    await simulator.log.wait_for(of_type(call_id, "call.incoming"))
    [invite] = (await ops_get(node, PATH)).json()["pushes"]
    assert (invite["status"], invite["delivery"], invite["stored"]) == (200, "stored", True)

    await alice.request({"type": "call.hangup", "call_id": call_id})
    await simulator.log.wait_for(of_type(call_id, "call.cancelled"))
    cancel, invite = (await ops_get(node, PATH)).json()["pushes"]
    assert (cancel["payload"]["type"], cancel["delivery"]) == ("call.cancelled", "stored")
    assert (invite["delivery"], invite["cause"]) == ("dropped", "displaced")


async def test_a_node_with_apns_credentials_says_so(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    node = await node_factory(**apns[1])
    assert node.node.apns_simulator is None
    body = (await ops_get(node, PATH)).json()
    assert body == {"simulator": False, "note": body["note"], "endpoint": None, "received": 0, "pushes": []}
    assert "not to the bundled simulator" in body["note"]


async def test_limit_is_checked(node: RunningNode) -> None:
    for bad in ("0", "201", "x"):
        response = await ops_get(node, PATH, limit=bad)
        assert response.status_code == 422 and response.json()["error"] == "validation_error"
