"""What a SIP node answers outside calls: OPTIONS, unknown methods, strangers' dialogs,
untrusted callers, floods."""

from __future__ import annotations

import asyncio
import socket

from sip.digest import authorize
from sip.message import Via, generate_branch
from tests.sipcalls.conftest import SipNodeFactory, sip_port
from tests.sipcalls.uac import build, send, sip_client


async def test_options_unknown_methods_and_strangers_dialogs(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    port = sip_port(node)
    async with sip_client() as client:
        options = await send(client, port, build("OPTIONS", "sip:voip.test"))
        assert options.status == 200 and "INVITE" in map(str, options.headers.get_all("Allow"))
        publish = await send(client, port, build("PUBLISH", "sip:alice@voip.test"))
        assert publish.status == 501 and "REGISTER" in map(str, publish.headers.get_all("Allow"))
        stranger = await send(client, port, build("BYE", "sip:alice@voip.test", to_tag="not-ours"))
        assert stranger.status == 481
        info = await send(client, port, build("INFO", "sip:alice@voip.test", to_tag="nor-this"))
        assert info.status == 481


async def test_untrusted_caller_must_authenticate(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_trusted_networks=["192.0.2.0/24"])
    alice = await node.device("alice", "alice-phone")
    port = sip_port(node)
    async with sip_client() as client:
        invite = build("INVITE", "sip:alice@voip.test", contact=str(client.contact()))
        challenge = await send(client, port, invite)
        assert challenge.status == 407
        retry = authorize(invite, challenge, "carol", "looking-glass")
        tx = client.send_request(retry, ("127.0.0.1", port), "UDP")
        incoming = await alice.expect("call.incoming")
        # The authenticated account is the caller, whatever the From says.
        assert incoming["caller"] == "sip:carol@voip.test"
        await alice.request({"type": "call.decline", "call_id": incoming["call_id"]})
        assert (await tx).status == 603


async def test_a_flood_from_one_address_is_dropped(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_rate=1.0, sip_burst=5)
    gateway = node.node.sip
    assert gateway is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        flood.bind(("127.0.0.1", 0))
        flood.settimeout(0.5)
        for _ in range(50):
            options = build("OPTIONS", "sip:voip.test")
            options.headers.insert_first(
                "Via", Via("UDP", "127.0.0.1", flood.getsockname()[1], {"branch": generate_branch()})
            )
            flood.sendto(bytes(options), ("127.0.0.1", gateway.port))
        await asyncio.sleep(0.3)
        answers = 0
        try:
            while True:
                flood.recvfrom(65535)
                answers += 1
        except TimeoutError:
            pass
    assert 1 <= answers <= 6  # the burst, and what one second refills
    assert gateway.endpoint.stats["dropped_rate_limited"] >= 40


async def test_a_busy_decline_is_486_and_the_offer_reaches_the_app(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    alice = await node.device("alice", "alice-phone")
    port = sip_port(node)
    async with sip_client() as client:
        invite = build("INVITE", "sip:alice@voip.test", contact=str(client.contact()))
        tx = client.send_request(invite, ("127.0.0.1", port), "UDP")
        incoming = await alice.expect("call.incoming")
        await alice.request({"type": "call.decline", "call_id": incoming["call_id"], "busy": True})
        assert (await tx).status == 486
    states = [e for e in await node.node.stores.calls.timeline(incoming["call_id"]) if e["event"] == "state"]
    assert states[-1]["to"] == "declined" and states[-1]["note"] == {"busy": True}


async def test_sip_messages_are_counted_by_method_and_status(sip_node: SipNodeFactory) -> None:
    from prometheus_client import REGISTRY

    def count(direction: str, method: str, status: str) -> float:
        labels = {"direction": direction, "method": method, "status": status}
        return REGISTRY.get_sample_value("voip_sip_messages_total", labels) or 0.0

    node = await sip_node()
    before_in, before_out = count("in", "OPTIONS", ""), count("out", "OPTIONS", "200")
    async with sip_client() as client:
        assert (await send(client, sip_port(node), build("OPTIONS", "sip:voip.test"))).status == 200
    assert count("in", "OPTIONS", "") == before_in + 1
    assert count("out", "OPTIONS", "200") == before_out + 1
