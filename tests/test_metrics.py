"""`/metrics`: operators only, and the counters move with what happens."""

from __future__ import annotations

import re

from tests.conftest import RunningNode


async def scrape(node: RunningNode) -> str:
    response = await node.http().get(
        "/metrics", headers={"Authorization": f"Bearer {node.auth.mint('ops', 'operator')}"}
    )
    assert response.status_code == 200
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_only_operators_scrape(node: RunningNode) -> None:
    client = node.http()
    assert (await client.get("/metrics")).status_code == 401
    device = {"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    assert (await client.get("/metrics", headers=device)).status_code == 403


async def test_calls_status_checks_and_errors_are_counted(node: RunningNode) -> None:
    before = await scrape(node)
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    await caller.request({"type": "call.hangup", "call_id": call_id})
    await phone.request({"type": "nonsense"})
    headers = {"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    await node.http().get(f"/v1/calls/{call_id}/status", params={"device_id": "b1"}, headers=headers)
    after = await scrape(node)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("voip_calls_total", state="ringing") == 1
    assert moved("voip_calls_total", state="cancelled", reason="remote_ended") == 1
    assert moved("voip_ws_errors_total", code="unknown_type") == 1
    assert moved("voip_status_checks_total", state="cancelled", end_call="true") == 1
    assert value(after, "voip_ws_connections") >= 2


async def test_unknown_call_answers_are_counted(node: RunningNode) -> None:
    before = await scrape(node)
    headers = {"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"}
    unknown = "7d0c1c1e-4c4f-4a51-9d3e-2f1f0b7c9a11"
    response = await node.http().get(f"/v1/calls/{unknown}/status", params={"device_id": "b1"}, headers=headers)
    assert response.status_code == 404 and response.json()["reason"] == "unknown_call"
    after = await scrape(node)
    moved = value(after, "voip_status_checks_total", state="unknown_call", end_call="true") - value(
        before, "voip_status_checks_total", state="unknown_call", end_call="true"
    )
    assert moved == 1


async def test_no_created_series(node: RunningNode) -> None:
    text = await scrape(node)
    assert "voip_calls_total" in text
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]
