"""A SIP caller meets the callee's availability (docs/protocol.md, `/v1/me/availability`):
do-not-disturb is 480 Temporarily Unavailable, busy (when_busy "reject", in an answered
call) is 486 Busy Here, both before anything rings; each is a missed call in the callee's
history. The SIP caller is the in-repo client on our own stack."""

from __future__ import annotations

import pytest

from tests.conftest import RunningNode
from tests.sipcalls.conftest import SipNodeFactory, sip_port
from tests.sipcalls.uac import build, sip_client

pytestmark = pytest.mark.on_cluster_too


async def put_availability(node: RunningNode, user: str, **body: object) -> None:
    headers = {"Authorization": f"Bearer {node.auth.mint(user, 'device')}"}
    response = await node.http().put("/v1/me/availability", json=body, headers=headers)
    assert response.status_code == 200, response.text


async def history(node: RunningNode, user: str) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {node.auth.mint(user, 'device')}"}
    response = await node.http().get("/v1/calls", headers=headers)
    assert response.status_code == 200, response.text
    calls: list[dict[str, object]] = response.json()["calls"]
    return calls


async def test_a_sip_caller_hears_480_under_do_not_disturb_and_486_when_busy(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    alice = await node.device("alice", "alice-phone")
    port = sip_port(node)
    await put_availability(node, "alice", dnd=True, when_busy="ring")
    async with sip_client() as client:
        invite = build("INVITE", "sip:alice@voip.test", contact=str(client.contact()))
        assert (await client.send_request(invite, ("127.0.0.1", port), "UDP")).status == 480
    await alice.silent(0.3)  # nothing rang
    [dnd] = await history(node, "alice")
    assert (dnd["direction"], dnd["state"], dnd["reason"]) == ("incoming", "missed", "dnd")
    assert str(dnd["peer"]).startswith("sip:")

    # In an answered call with bob, and busy calls are rejected.
    await put_availability(node, "alice", dnd=False, when_busy="reject")
    bob = await node.device("bob", "bob-phone")
    started = await bob.request({"type": "call.start", "callee": "alice"})
    await alice.expect("call.incoming", call_id=started["call_id"])
    await alice.request({"type": "call.answer", "call_id": started["call_id"]})
    async with sip_client() as client:
        invite = build("INVITE", "sip:alice@voip.test", contact=str(client.contact()))
        assert (await client.send_request(invite, ("127.0.0.1", port), "UDP")).status == 486
    busy = (await history(node, "alice"))[0]
    assert (busy["direction"], busy["state"], busy["reason"]) == ("incoming", "missed", "busy")
