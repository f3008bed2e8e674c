"""`GET /v1/ops/simulator/fcm`: what the embedded FCM simulator received, on a node with no
FCM credentials."""

from __future__ import annotations

import httpx

from fcmsim import new_token
from tests.conftest import RunningNode
from tests.ops.conftest import ops_get, place_call

PATH = "/v1/ops/simulator/fcm"


async def test_messages_show_data_answer_and_delivery(node: RunningNode) -> None:
    simulator = node.node.fcm_simulator
    assert simulator is not None, "a node with no FCM credentials pushes to its simulator"
    token = new_token()
    simulator.add_device(token, online=False)
    registered = await node.http().put(
        "/v1/devices/b-pixel",
        json={"platform": "android", "fcm_token": token},
        headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"},
    )
    assert registered.status_code == 201
    alice = await node.device("alice", "a-phone")
    call_id = await place_call(alice, "bob")
    await simulator.wait_for(lambda m: m.data.get("call_id") == call_id)

    body = (await ops_get(node, PATH)).json()
    assert body["simulator"] is True and body["endpoint"] == simulator.endpoint and body["received"] == 1
    [invite] = body["messages"]
    assert invite["status"] == 200 and invite["error"] is None and invite["name"].startswith("projects/")
    assert invite["delivery"] == "stored" and invite["stored"] is True  # the phone is offline
    assert invite["device_token_prefix"] == token[:8] and token not in str(invite)
    assert invite["android"] == {"priority": "high", "ttl": invite["android"]["ttl"], "collapse_key": call_id}
    assert invite["data"]["type"] == "call.incoming" and invite["data"]["call_id"] == call_id
    async with httpx.AsyncClient() as client:  # the capability path, by hand
        assert (await client.get(invite["data"]["status_url"])).json()["state"] == "ringing"

    device = await node.http().get(PATH, headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"})
    assert device.status_code == 403
    assert (await ops_get(node, PATH, limit="0")).status_code == 422
