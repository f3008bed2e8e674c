"""A push invite and its cancellation, and a SIP call from sipp, on a real Redis Cluster:
the push log, the SIP legs and the digest nonces live on its shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import register
from tests.sipcalls.conftest import ACCOUNTS, APP_SDP, DOMAIN, finished, sip_port, start_sipp
from tests.sipcalls.test_inbound import CALLER, uac
from tests.test_call_pushes import VOIP_TOPIC, invites_for, pushes_on_timeline

pytestmark = pytest.mark.interop


async def test_an_invite_push_and_its_cancellation_on_a_cluster(
    cluster_node: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    sim, settings = apns
    node_a, node_b = await cluster_node(**settings), await cluster_node(**settings)
    ipad = sim.add_device(VOIP_TOPIC, online=False)
    await register(node_b, "bob", "b-ipad", voip_token=ipad.token)
    caller = await node_a.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    [invite] = await invites_for(sim, call_id)
    response = await node_b.http().get(orjson.loads(invite.body)["status_url"])
    assert response.status_code == 200 and response.json()["state"] == "ringing"

    await caller.request({"type": "call.hangup", "call_id": call_id})
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    assert cancel.token == ipad.token and orjson.loads(cancel.body)["reason"] == "remote_ended"
    ipad.go_online()
    assert [d.push.payload["type"] for d in ipad.inbox] == ["call.cancelled"]
    # The push log (the invite's record, that the cancellation needed) is on the cluster too.
    pushes = await pushes_on_timeline(node_a, call_id, 2)
    assert [e["kind"] for e in pushes] == ["invite", "cancel"]


async def test_a_sip_peer_calls_an_app_on_a_cluster(cluster_node: Any, tmp_path: Path) -> None:
    node = await cluster_node(
        sip_enabled=True, sip_port=0, sip_domain=DOMAIN, sip_accounts=ACCOUNTS, sip_digest_algorithms=["MD5"]
    )
    alice = await node.device("alice", "alice-phone")
    sipp = start_sipp(uac(sip_port(node), "peer_calls_app_answers.xml"), tmp_path)

    incoming = await alice.expect("call.incoming", timeout=10)
    assert incoming["caller"] == CALLER
    call_id = incoming["call_id"]
    assert (await alice.request({"type": "call.ringing", "call_id": call_id}))["type"] == "ack"
    assert (await alice.request({"type": "call.answer", "call_id": call_id, "sdp": APP_SDP}))["type"] == "ack"
    assert (await alice.expect("call.ended", timeout=10, call_id=call_id))["reason"] == "remote_ended"
    await finished(sipp)
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.state.value == "ended"
