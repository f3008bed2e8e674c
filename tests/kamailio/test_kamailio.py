"""Kamailio (config/kamailio/kamailio.cfg) dispatching SIP over two nodes on one Redis:
real kamailio, sipp and baresip processes, in-process nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import interop
from tests.conftest import DeviceClient, RunningNode
from tests.kamailio import Kamailio
from tests.ports import free_port
from tests.sipcalls.conftest import (
    APP_SDP,
    SipNodeFactory,
    finished,
    messages_log,
    sip_port,
    start_sipp,
)
from tests.sipcalls.test_baresip import CONFIG as BARESIP_CONFIG
from tests.sipcalls.test_baresip import baresip_sip_port
from voip.sipcalls.legs import OutboundLeg

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
        for n in nodes
        if n.node.sip is not None
        for leg in n.node.sip.legs.values()
    )


async def until_confirmed(kamailio: Kamailio, nodes: list[RunningNode], call_id: str) -> None:
    """Until the peer's ACK, through Kamailio, confirmed the dialog on its node."""
    for _ in range(100):
        if confirmed(nodes, call_id):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"no ACK reached the node:\n{kamailio.log()}")


async def sip_nodes_of(nodes: list[RunningNode], call_id: str) -> set[str]:
    for node in nodes:  # each node writes its own SIP notes, in batches
        await node.node.deliveries.flush()
    timeline = await nodes[0].node.stores.calls.timeline(call_id)
    return {e["node"] for e in timeline if e["event"] == "sip"}


async def peer_calls_alice(
    kamailio: Kamailio, node: RunningNode, scenario: str, directory: Path
) -> tuple[DeviceClient, asyncio.Task[tuple[int, str]], dict[str, Any]]:
    """alice's app on `node`; sipp calls her through Kamailio with `scenario`, run in
    `directory`: her app, sipp, and her call.incoming."""
    alice = await node.device("alice", "alice-phone")
    sipp = start_sipp(uac(kamailio, str(SCENARIOS / scenario)), directory)
    return alice, sipp, await alice.expect("call.incoming", timeout=10)


async def alice_answers_peer(
    kamailio: Kamailio, node: RunningNode, scenario: str, directory: Path
) -> tuple[DeviceClient, asyncio.Task[tuple[int, str]], str]:
    """`peer_calls_alice`, and her app answers: her app, sipp, and the call's id."""
    alice, sipp, incoming = await peer_calls_alice(kamailio, node, scenario, directory)
    await alice.request({"type": "call.answer", "call_id": incoming["call_id"], "sdp": APP_SDP})
    return alice, sipp, incoming["call_id"]


async def test_a_peer_call_stays_on_one_node_and_its_bye_follows_record_route(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    alice, sipp, call_id = await alice_answers_peer(kamailio, nodes[1], "peer_calls_app_answers.xml", tmp_path / "sipp")
    ended = await alice.expect("call.ended", timeout=10, call_id=call_id)
    assert ended["reason"] == "remote_ended"
    await finished(sipp)
    log = messages_log(tmp_path / "sipp")
    assert f"Record-Route: <sip:127.0.0.1:{kamailio.port};lr" in log  # our 200 kept Kamailio's route
    # INVITE, ACK and BYE were all taken by one node.
    assert len(await sip_nodes_of(nodes, call_id)) == 1
    timeline = await nodes[0].timeline(call_id, lambda t: any(e.get("received") == "BYE" for e in t))
    assert any(e.get("received") == "BYE" for e in timeline)


async def test_the_app_hangs_up_and_the_bye_goes_back_through_kamailio(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    alice, sipp, call_id = await alice_answers_peer(
        kamailio, nodes[0], "peer_calls_app_hangs_up.xml", tmp_path / "sipp"
    )
    await until_confirmed(kamailio, nodes, call_id)
    assert (await alice.request({"type": "call.hangup", "call_id": call_id}))["state"] == "ended"
    await finished(sipp)
    timeline = await nodes[0].timeline(call_id, lambda t: any(e.get("sent") == "BYE" for e in t))
    assert any(e.get("sent") == "BYE" and e.get("status") == 200 for e in timeline)
    log = messages_log(tmp_path / "sipp")
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{kamailio.port}" in log.split("BYE sip:")[-1]  # through Kamailio


async def test_the_peer_cancels_and_the_cancel_follows_its_invite(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    alice, sipp, incoming = await peer_calls_alice(kamailio, nodes[0], "peer_cancels.xml", tmp_path / "sipp")
    await alice.request({"type": "call.ringing", "call_id": incoming["call_id"]})
    cancelled = await alice.expect("call.cancelled", timeout=10, call_id=incoming["call_id"])
    assert cancelled["reason"] == "remote_ended"
    await finished(sipp)
    assert len(await sip_nodes_of(nodes, incoming["call_id"])) == 1


# baresip as alice's desk phone, its outbound proxy Kamailio; ctrl_tcp (JSON in netstrings)
# lets the test hang it up.
DESK_PHONE_CONFIG = BARESIP_CONFIG + (
    "module_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\nctrl_tcp_listen\t\t127.0.0.1:{control}\n"
)
DESK_PHONE_ACCOUNT = (
    '<sip:alice@voip.test>;auth_pass=wonderland;outbound="sip:127.0.0.1:{kamailio}";regint=300;answermode=auto\n'
)


@dataclass(frozen=True)
class DeskPhone:
    sip: int
    control: int  # ctrl_tcp


@contextlib.asynccontextmanager
async def desk_phone(kamailio: Kamailio, directory: Path) -> AsyncIterator[DeskPhone]:
    """A running baresip whose outbound proxy is Kamailio."""
    phone = DeskPhone(sip=baresip_sip_port(), control=free_port())
    (directory / "config").write_text(DESK_PHONE_CONFIG.format(port=phone.sip, control=phone.control))
    (directory / "accounts").write_text(DESK_PHONE_ACCOUNT.format(kamailio=kamailio.port))
    with (directory / "baresip.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            interop.program("baresip", "baresip"),
            "-f",
            str(directory),
            "-t",
            "60",
            stdout=log,
            stderr=log,
        )
    try:
        yield phone
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5)
        if process.returncode is None:
            process.kill()
            await process.wait()


async def hang_up(phone: DeskPhone) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", phone.control)
    try:
        command = json.dumps({"command": "hangup", "token": "t"}).encode()
        writer.write(b"%d:%s," % (len(command), command))
        await writer.drain()
        while True:  # events may come first; the command's own response carries our token
            length = int((await asyncio.wait_for(reader.readuntil(b":"), 5))[:-1])
            frame = json.loads((await reader.readexactly(length + 1))[:-1])
            if frame.get("token") == "t":
                assert frame["ok"], frame
                return
    finally:
        writer.close()


async def registered_through(kamailio: Kamailio, nodes: list[RunningNode], phone: DeskPhone) -> tuple[RunningNode, str]:
    """The node that holds the phone's binding, and its device id, once the REGISTER came through."""
    registrar = nodes[0].node.sip.registrar  # type: ignore[union-attr]
    for _ in range(100):
        if bindings := await registrar.bindings("alice"):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"baresip did not register through Kamailio:\n{kamailio.log()}")
    ((device_id, binding),) = bindings.items()
    # RFC 3327: Kamailio's Path, with the phone's own address for the way back to it
    assert list(binding.path) == [f"<sip:127.0.0.1:{kamailio.port};lr;received=sip:127.0.0.1:{phone.sip}>"]
    return next(n for n in nodes if n.node.node_id == binding.node), device_id


async def answered_by_phone(
    kamailio: Kamailio, nodes: list[RunningNode], phone: DeskPhone
) -> tuple[RunningNode, DeviceClient, str]:
    """Once the phone registered through Kamailio, bob, on the node without its binding,
    calls alice; her phone answers through Kamailio. The node with the binding, bob's app,
    the call's id."""
    holder, device_id = await registered_through(kamailio, nodes, phone)
    other = next(n for n in nodes if n is not holder)
    bob = await other.device("bob", "bob-phone")
    call_id = (await bob.request({"type": "call.start", "callee": "alice"}))["call_id"]
    answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
    assert answered["device_id"] == device_id
    assert "PCMU/8000" in answered["sdp"]  # baresip's own answer
    assert holder.node.sip is not None
    (leg,) = [leg for leg in holder.node.sip.legs.values() if leg.call_id == call_id]
    assert leg.dialog is not None
    # The phone's 200 came back through Kamailio, which record-routed the INVITE: every
    # later request of the dialog, both ways, goes through it too.
    assert isinstance(leg, OutboundLeg)
    ftag = leg.invite.from_.params["tag"]
    assert [str(hop.uri) for hop in leg.dialog.route_set] == [f"sip:127.0.0.1:{kamailio.port};lr=on;ftag={ftag}"]
    return holder, bob, call_id


async def sent_bye(node: RunningNode, call_id: str) -> dict[str, Any]:
    for _ in range(50):
        timeline = await node.node.stores.calls.timeline(call_id)
        if bye := next((e for e in timeline if e.get("sent") == "BYE"), None):
            return bye
        await asyncio.sleep(0.1)
    pytest.fail(f"no BYE sent for {call_id}: {timeline}")


async def test_an_app_calls_a_desk_phone_through_kamailio_and_hangs_up(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    async with desk_phone(kamailio, tmp_path) as phone:
        holder, bob, call_id = await answered_by_phone(kamailio, nodes, phone)
        assert (await bob.request({"type": "call.hangup", "call_id": call_id}))["state"] == "ended"
        assert (await sent_bye(holder, call_id))["status"] == 200  # baresip took it, through Kamailio


async def test_a_desk_phone_hangs_up_and_its_bye_comes_through_kamailio(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    async with desk_phone(kamailio, tmp_path) as phone:
        holder, bob, call_id = await answered_by_phone(kamailio, nodes, phone)
        await hang_up(phone)
        ended = await bob.expect("call.ended", timeout=10, call_id=call_id)
        assert ended["reason"] == "remote_ended"
        timeline = await holder.timeline(call_id, lambda t: any(e.get("received") == "BYE" for e in t))
        assert any(e.get("received") == "BYE" and e["node"] == holder.node.node_id for e in timeline)


def dispatcher_hash(call_id: str) -> int:
    """Kamailio's dispatcher hash of a Call-ID (ds_get_hash in dispatch.c): which node
    algorithm 0 picks, as `hash % number of nodes`."""
    data, h = call_id.strip().encode(), 0
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        v = int.from_bytes(data[i : i + 4], "big")
        h = (h + (v ^ (v >> 3))) & 0xFFFFFFFF
    v = int.from_bytes(data[whole:], "big") if data[whole:] else 0
    h = (h + (v ^ (v >> 3))) & 0xFFFFFFFF
    h = ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & 0xFFFFFFFF
    return h or 1


def call_ids(index: int, count: int) -> list[str]:
    """Call-IDs whose hash picks dispatcher entry `index` of two."""
    found = (f"{uuid.uuid4().hex}@kamailio.test" for _ in iter(int, 1))
    return [next(c for c in found if dispatcher_hash(c) % 2 == index) for _ in range(count)]


async def test_a_node_killed_mid_run_new_calls_reach_the_survivor_and_its_calls_go_on(
    cluster: tuple[Kamailio, list[RunningNode]], tmp_path: Path
) -> None:
    kamailio, nodes = cluster
    # alice has a device on each node; the one on the node that survives answers.
    phones = {n.node.node_id: await n.device("alice", f"alice-{i}") for i, n in enumerate(nodes)}

    # A call the survivor holds, answered before the other node dies and hung up after.
    (kept_cid,) = call_ids(0, 1)
    kept = start_sipp(
        [*uac(kamailio, str(SCENARIOS / "peer_calls_app_hangs_up.xml")), "-cid_str", kept_cid],
        tmp_path / "kept",
    )
    kept_call = (await phones[nodes[0].node.node_id].expect("call.incoming", timeout=10))["call_id"]
    # The node whose gateway took the INVITE (its leg exists before the app hears of it).
    (survivor,) = [n for n in nodes if n.node.sip and any(leg.call_id == kept_call for leg in n.node.sip.legs.values())]
    holder = survivor.node.node_id
    dead = next(n for n in nodes if n is not survivor)
    alice = phones[holder]
    await alice.expect("call.incoming", call_id=kept_call)
    await alice.request({"type": "call.answer", "call_id": kept_call, "sdp": APP_SDP})
    await until_confirmed(kamailio, [survivor], kept_call)

    await dead.stop()  # its SIP socket closes without a word to Kamailio
    loop = asyncio.get_running_loop()
    died = loop.time()

    async def call(cid: str, name: str) -> None:
        sipp = start_sipp(
            [*uac(kamailio, str(SCENARIOS / "peer_calls_app_answers.xml")), "-cid_str", cid],
            tmp_path / name,
        )
        incoming = await alice.expect("call.incoming", timeout=10)
        await alice.request({"type": "call.answer", "call_id": incoming["call_id"], "sdp": APP_SDP})
        await alice.expect("call.ended", timeout=10, call_id=incoming["call_id"])
        await finished(sipp)
        assert await sip_nodes_of(nodes, incoming["call_id"]) == {holder}

    # Hashed to the dead node before probing noticed: silence for fr_timer, then the next node.
    before_probe, after_probe = call_ids(1, 2)
    await call(before_probe, "before-probe")
    assert loop.time() - died < 10
    assert f"no answer to INVITE {before_probe} from a node" in kamailio.log()
    # OPTIONS probing takes the dead node out; then its share goes to the survivor at once.
    down = f"dispatcher: node sip:127.0.0.1:{sip_port(dead)} is out"
    while down not in kamailio.log():
        assert loop.time() - died < 10, kamailio.log()
        await asyncio.sleep(0.1)
    await call(after_probe, "after-probe")
    assert after_probe not in kamailio.log()  # no failover: the dead node was not tried

    # The survivor's call went on through all this.
    assert (await alice.request({"type": "call.hangup", "call_id": kept_call}))["state"] == "ended"
    await finished(kept)
    timeline = await survivor.timeline(kept_call, lambda t: any(e.get("sent") == "BYE" for e in t))
    assert any(e.get("sent") == "BYE" and e.get("status") == 200 for e in timeline)
