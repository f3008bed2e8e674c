"""An app user calls a SIP callee: a `sip:` URI or a trunk number, answered by sipp."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DeviceClient
from tests.ports import free_port
from tests.sipcalls.conftest import (
    SipNodeFactory,
    finished,
    scenario,
    start_sipp,
    wait_bound,
)

pytestmark = [pytest.mark.interop, pytest.mark.on_cluster_too]


async def place(bob: DeviceClient, callee: str) -> str:
    started = await bob.request({"type": "call.start", "callee": callee})
    assert started["type"] == "call.started", started
    return str(started["call_id"])


async def test_app_calls_a_sip_uri_that_answers(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    bob = await node.device("bob", "bob-phone")
    port = free_port()
    sipp = start_sipp(["-sn", "uas", "-p", str(port), "-m", "1", "-mp", str(free_port())], tmp_path)
    await wait_bound(port, sipp)

    call_id = await place(bob, f"sip:service@127.0.0.1:{port}")
    await bob.expect("call.ringing", timeout=10, call_id=call_id)
    answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
    assert "m=audio" in answered["sdp"]  # sipp's answer reaches the app
    assert answered["device_id"].startswith("sip-leg-")
    reply = await bob.request({"type": "call.hangup", "call_id": call_id})
    assert reply["state"] == "ended"
    await finished(sipp)  # sipp got its BYE

    timeline = await node.timeline(call_id, lambda t: any(e.get("sent") == "BYE" for e in t))
    sip = [e for e in timeline if e["event"] == "sip"]
    assert [e.get("sent") or e.get("received") for e in sip] == ["INVITE", 200, "BYE"]
    assert not node.node.sip.legs  # type: ignore[union-attr]


async def test_app_cancels_while_the_sip_callee_rings(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    bob = await node.device("bob", "bob-phone")
    port = free_port()
    sipp = start_sipp(["-sf", scenario("uas_rings_until_cancel.xml"), "-p", str(port), "-m", "1"], tmp_path)
    await wait_bound(port, sipp)

    call_id = await place(bob, f"sip:service@127.0.0.1:{port}")
    await bob.expect("call.ringing", timeout=10, call_id=call_id)
    reply = await bob.request({"type": "call.hangup", "call_id": call_id})
    assert reply["state"] == "cancelled"
    await finished(sipp)  # CANCEL, 487, ACK
    timeline = await node.timeline(call_id, lambda t: any(e.get("received") == 487 for e in t))
    assert any(e.get("received") == 487 for e in timeline)


@pytest.mark.parametrize(
    ("name", "frame", "reason"),
    [
        ("uas_busy.xml", "call.declined", "remote_ended"),
        ("uas_not_found.xml", "call.failed", "failed"),
    ],
)
async def test_sip_callee_refuses(sip_node: SipNodeFactory, tmp_path: Path, name: str, frame: str, reason: str) -> None:
    node = await sip_node()
    bob = await node.device("bob", "bob-phone")
    port = free_port()
    sipp = start_sipp(["-sf", scenario(name), "-p", str(port), "-m", "1"], tmp_path)
    await wait_bound(port, sipp)

    call_id = await place(bob, f"sip:service@127.0.0.1:{port}")
    ended = await bob.expect(frame, timeout=10, call_id=call_id)
    assert ended["reason"] == reason
    await finished(sipp)


async def test_trunk_number_with_digest(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    port = free_port()
    node = await sip_node(
        sip_trunk_host=f"127.0.0.1:{port}",
        sip_trunk_username="trunkuser",
        sip_trunk_password="trunksecret",
    )
    bob = await node.device("bob", "bob-phone")
    sipp = start_sipp(["-sf", scenario("uas_trunk_digest.xml"), "-p", str(port), "-m", "1"], tmp_path)
    await wait_bound(port, sipp)

    call_id = await place(bob, "+15557654321")
    await bob.expect("call.ringing", timeout=10, call_id=call_id)
    answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
    assert "m=audio 50000" in answered["sdp"]
    await bob.request({"type": "call.hangup", "call_id": call_id})
    output = await finished(sipp)
    assert "INVITE sip:+15557654321@127.0.0.1:" in output  # the trunk got the number
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.callee_user == "+15557654321" and call.state.value == "ended"


async def test_app_users_are_not_sent_to_the_trunk(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_trunk_host="127.0.0.1:9")
    bob = await node.device("bob", "bob-phone")
    carol = await node.device("carol", "carol-phone")
    call_id = await place(bob, "carol")
    await carol.expect("call.incoming", call_id=call_id)
    assert not node.node.sip.legs  # type: ignore[union-attr]


async def test_sip_callee_hangs_up(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    bob = await node.device("bob", "bob-phone")
    port = free_port()
    sipp = start_sipp(["-sf", scenario("uas_answers_then_hangs_up.xml"), "-p", str(port), "-m", "1"], tmp_path)
    await wait_bound(port, sipp)

    call_id = await place(bob, f"sip:service@127.0.0.1:{port}")
    answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
    assert "m=audio 50002" in answered["sdp"]
    ended = await bob.expect("call.ended", timeout=10, call_id=call_id)
    assert ended["reason"] == "remote_ended"
    await finished(sipp)
