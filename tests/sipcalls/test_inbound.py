"""A SIP peer (sipp) calls an app user; the app's device is a real WebSocket client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import register
from tests.sipcalls.conftest import (
    APP_SDP,
    SipNodeFactory,
    finished,
    messages_log,
    scenario,
    sip_port,
    start_sipp,
)
from tests.test_call_pushes import VOIP_TOPIC, invites_for

pytestmark = [pytest.mark.interop, pytest.mark.on_cluster_too]

CALLER = "sip:+15551234@pbx.example"


def uac(node_port: int, name: str, callee: str = "alice") -> list[str]:
    return [f"127.0.0.1:{node_port}", "-sf", scenario(name), "-s", callee, "-m", "1", "-p", "0"]


async def test_app_answers_and_the_peer_hangs_up(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    alice = await node.device("alice", "alice-phone")
    sipp = start_sipp(uac(sip_port(node), "peer_calls_app_answers.xml"), tmp_path)

    incoming = await alice.expect("call.incoming", timeout=10)
    assert incoming["caller"] == CALLER
    assert "m=audio 49170 RTP/AVP 0" in incoming["sdp"]  # the peer's offer reaches the app
    call_id = incoming["call_id"]
    assert (await alice.request({"type": "call.ringing", "call_id": call_id}))["type"] == "ack"
    assert (await alice.request({"type": "call.answer", "call_id": call_id, "sdp": APP_SDP}))["type"] == "ack"

    ended = await alice.expect("call.ended", timeout=10, call_id=call_id)
    assert ended["reason"] == "remote_ended"
    await finished(sipp)
    assert "m=audio 40000 RTP/AVP 0" in messages_log(tmp_path)  # the app's answer reached the peer

    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.state.value == "ended" and call.caller_user == CALLER
    timeline = await node.timeline(call_id, lambda t: any(e.get("received") == "BYE" for e in t))
    sip = [e for e in timeline if e["event"] == "sip"]
    assert sip and all(e["call_id_sip"] == sip[0]["call_id_sip"] for e in sip)
    assert {"received": "BYE"}.items() <= next(e for e in sip if e.get("received") == "BYE").items()
    assert not node.node.sip.legs and not len(node.node.sip.dialogs)  # type: ignore[union-attr]


async def test_peer_cancels_while_the_app_rings(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    alice = await node.device("alice", "alice-phone")
    tablet = await node.device("alice", "alice-tablet")
    sipp = start_sipp(uac(sip_port(node), "peer_cancels.xml"), tmp_path)

    incoming = await alice.expect("call.incoming", timeout=10)
    await tablet.expect("call.incoming", call_id=incoming["call_id"])
    await alice.request({"type": "call.ringing", "call_id": incoming["call_id"]})  # sipp waits for 180

    for device in (alice, tablet):
        cancelled = await device.expect("call.cancelled", timeout=10, call_id=incoming["call_id"])
        assert cancelled["reason"] == "remote_ended"
    await finished(sipp)
    call = await node.node.stores.calls.get(incoming["call_id"])
    assert call is not None and call.state.value == "cancelled"


async def test_app_hangs_up_and_the_peer_gets_a_bye(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    alice = await node.device("alice", "alice-phone")
    sipp = start_sipp(uac(sip_port(node), "peer_calls_app_hangs_up.xml"), tmp_path)

    incoming = await alice.expect("call.incoming", timeout=10)
    call_id = incoming["call_id"]
    await alice.request({"type": "call.answer", "call_id": call_id, "sdp": APP_SDP})
    await asyncio.sleep(0.3)  # the peer's ACK
    reply = await alice.request({"type": "call.hangup", "call_id": call_id})
    assert reply["state"] == "ended"
    await finished(sipp)
    assert "m=audio 40000 RTP/AVP 0" in messages_log(tmp_path)
    timeline = await node.timeline(call_id, lambda t: any(e.get("sent") == "BYE" for e in t))
    assert any(e.get("sent") == "BYE" and e.get("status") == 200 for e in timeline)


async def test_app_declines_with_603(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    alice = await node.device("alice", "alice-phone")
    sipp = start_sipp(uac(sip_port(node), "peer_calls_app_declines.xml"), tmp_path)

    incoming = await alice.expect("call.incoming", timeout=10)
    await alice.request({"type": "call.decline", "call_id": incoming["call_id"]})
    await finished(sipp)
    call = await node.node.stores.calls.get(incoming["call_id"])
    assert call is not None and call.state.value == "declined"


async def test_unknown_user_gets_404(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    sipp = start_sipp(uac(sip_port(node), "peer_calls_unknown_user.xml", callee="nobody"), tmp_path)
    await finished(sipp)
    assert not node.node.sip.legs  # type: ignore[union-attr]


async def test_unanswered_call_gets_480(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node(ring_timeout=1.0)
    alice = await node.device("alice", "alice-phone")
    sipp = start_sipp(uac(sip_port(node), "peer_calls_app_missed.xml"), tmp_path)
    incoming = await alice.expect("call.incoming", timeout=10)
    await alice.request({"type": "call.ringing", "call_id": incoming["call_id"]})
    missed = await alice.expect("call.missed", timeout=10, call_id=incoming["call_id"])
    assert missed["reason"] == "unanswered"
    await finished(sipp)


async def test_a_sip_call_wakes_a_sleeping_iphone_and_cancels_it(
    sip_node: SipNodeFactory, apns: tuple[APNsSimulator, dict[str, str]], tmp_path: Path
) -> None:
    # The peer calls alice, whose only phone is asleep: it rings through a VoIP push. The
    # peer gives up; the cancellation push displaces the stored invite on the phone.
    sim, settings = apns
    node = await sip_node(**settings)
    iphone = sim.add_device(VOIP_TOPIC, online=False)
    await register(node, "alice", "alice-iphone", voip_token=iphone.token)
    tablet = await node.device("alice", "alice-tablet")  # sipp waits for a 180
    sipp = start_sipp(uac(sip_port(node), "peer_cancels.xml"), tmp_path)

    incoming = await tablet.expect("call.incoming", timeout=10)
    [invite] = await invites_for(sim, incoming["call_id"])
    assert orjson.loads(invite.body)["caller"]["id"] == CALLER
    await tablet.request({"type": "call.ringing", "call_id": incoming["call_id"]})

    [cancel] = await invites_for(sim, incoming["call_id"], "call.cancelled")
    assert orjson.loads(cancel.body)["reason"] == "remote_ended" and cancel.token == iphone.token
    await finished(sipp)
    iphone.go_online()
    assert [d.push.payload["type"] for d in iphone.inbox] == ["call.cancelled"]
