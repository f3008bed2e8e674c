"""Kamailio (config/kamailio/kamailio.cfg) dispatching SIP over two nodes on one Redis:
real kamailio, sipp and baresip processes, in-process nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import RunningNode
from tests.kamailio import Kamailio
from tests.sipcalls.conftest import (
    APP_SDP,
    SipNodeFactory,
    finished,
    messages_log,
    sip_port,
    start_sipp,
)

SCENARIOS = Path(__file__).parent / "scenarios"
pytestmark = pytest.mark.interop


@pytest.fixture
async def cluster(sip_node: SipNodeFactory, tmp_path: Path) -> AsyncIterator[tuple[Kamailio, list[RunningNode]]]:
    nodes = [await sip_node(), await sip_node()]
    kamailio = Kamailio(tmp_path, [sip_port(n) for n in nodes])
    await kamailio.start()
    yield kamailio, nodes
    await kamailio.stop()


def uac(kamailio: Kamailio, path: str) -> list[str]:
    return [f"127.0.0.1:{kamailio.port}", "-sf", path, "-s", "alice", "-m", "1", "-p", "0"]


def confirmed(nodes: list[RunningNode], call_id: str) -> bool:
    return any(
        leg.call_id == call_id and leg.dialog is not None and leg.dialog.state.name == "CONFIRMED"
        for n in nodes if n.node.sip is not None for leg in n.node.sip.legs.values()
    )


async def sip_nodes_of(nodes: list[RunningNode], call_id: str) -> set[str]:
    timeline = await nodes[0].node.stores.calls.timeline(call_id)
    return {e["node"] for e in timeline if e["event"] == "sip"}


async def test_a_peer_call_stays_on_one_node_and_its_bye_follows_record_route(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    alice = await nodes[1].device("alice", "alice-phone")
    sipp = start_sipp(uac(kamailio, str(SCENARIOS / "peer_calls_app_answers.xml")), tmp_path / "sipp")
    incoming = await alice.expect("call.incoming", timeout=10)
    call_id = incoming["call_id"]
    await alice.request({"type": "call.answer", "call_id": call_id, "sdp": APP_SDP})
    ended = await alice.expect("call.ended", timeout=10, call_id=call_id)
    assert ended["reason"] == "remote_ended"
    await finished(sipp)
    log = messages_log(tmp_path / "sipp")
    assert f"Record-Route: <sip:127.0.0.1:{kamailio.port};lr" in log  # our 200 kept Kamailio's route
    # INVITE, ACK and BYE were all taken by one node.
    assert len(await sip_nodes_of(nodes, call_id)) == 1
    timeline = await nodes[0].node.stores.calls.timeline(call_id)
    assert any(e.get("received") == "BYE" for e in timeline)


async def test_the_app_hangs_up_and_the_bye_goes_back_through_kamailio(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    alice = await nodes[0].device("alice", "alice-phone")
    sipp = start_sipp(uac(kamailio, str(SCENARIOS / "peer_calls_app_hangs_up.xml")), tmp_path / "sipp")
    incoming = await alice.expect("call.incoming", timeout=10)
    call_id = incoming["call_id"]
    await alice.request({"type": "call.answer", "call_id": call_id, "sdp": APP_SDP})
    for _ in range(100):  # until the peer's ACK, through Kamailio, confirmed the dialog on its node
        if confirmed(nodes, call_id):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"no ACK reached the node:\n{kamailio.log()}")
    assert (await alice.request({"type": "call.hangup", "call_id": call_id}))["state"] == "ended"
    await finished(sipp)
    timeline = await nodes[0].node.stores.calls.timeline(call_id)
    assert any(e.get("sent") == "BYE" and e.get("status") == 200 for e in timeline)
    log = messages_log(tmp_path / "sipp")
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{kamailio.port}" in log.split("BYE sip:")[-1]  # through Kamailio


async def test_the_peer_cancels_and_the_cancel_follows_its_invite(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    alice = await nodes[0].device("alice", "alice-phone")
    sipp = start_sipp(uac(kamailio, str(SCENARIOS / "peer_cancels.xml")), tmp_path / "sipp")
    incoming = await alice.expect("call.incoming", timeout=10)
    await alice.request({"type": "call.ringing", "call_id": incoming["call_id"]})
    cancelled = await alice.expect("call.cancelled", timeout=10, call_id=incoming["call_id"])
    assert cancelled["reason"] == "remote_ended"
    await finished(sipp)
    assert len(await sip_nodes_of(nodes, incoming["call_id"])) == 1
