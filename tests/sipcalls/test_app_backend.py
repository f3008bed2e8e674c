"""SIP calls and the app's backend: the call hook decides (403 for a rejected INVITE), and
only a trusted network's PBX names its callers."""

from __future__ import annotations

import orjson

from sip.digest import authorize
from sip.message import NameAddr, Request, generate_tag, parse_uri
from tests.http_receiver import Answer, HttpReceiver, Received
from tests.sipcalls.conftest import DOMAIN, SipNodeFactory, sip_port
from tests.sipcalls.uac import build, send, sip_client
from tests.test_webhooks import SECRET
from voip.calls import CallState
from voip.webhooks.signing import verify


def named_invite(contact: str, name: str) -> Request:
    invite = build("INVITE", "sip:alice@voip.test", contact=contact)
    invite.headers.set("From", NameAddr(parse_uri(f"sip:tester@{DOMAIN}"), name, {"tag": generate_tag()}))
    return invite


async def test_an_invite_the_hook_rejects_is_403_and_rings_nothing(sip_node: SipNodeFactory) -> None:
    asked: list[Received] = []

    def reject(request: Received) -> Answer:
        asked.append(request)
        return 200, b'{"action": "reject", "reason": "not from that PBX"}'

    hook = await HttpReceiver(respond=reject).start()
    try:
        node = await sip_node(call_hook_url=hook.url, webhook_secret=SECRET)
        alice = await node.device("alice", "alice-phone")
        async with sip_client() as client:
            answer = await send(
                client, sip_port(node), build("INVITE", "sip:alice@voip.test", contact=str(client.contact()))
            )
        assert answer.status == 403
        await alice.silent(0.3)
        [request] = asked
        assert verify(SECRET, request.body, request.headers["voip-signature"])
        body = orjson.loads(request.body)
        assert body["source"] == "sip" and body["callee"] == "alice" and body["caller"]["user"].startswith("sip:")
        call = await node.node.stores.calls.get(body["call_id"])
        assert call is not None and call.state is CallState.FAILED
    finally:
        await hook.stop()


async def test_a_trusted_pbx_names_its_caller(sip_node: SipNodeFactory) -> None:
    node = await sip_node()  # 127.0.0.0/8 is trusted by default
    alice = await node.device("alice", "alice-phone")
    async with sip_client() as client:
        tx = client.send_request(
            named_invite(str(client.contact()), "Front Desk"), ("127.0.0.1", sip_port(node)), "UDP"
        )
        incoming = await alice.expect("call.incoming")
        assert incoming["caller_name"] == "Front Desk"
        await alice.request({"type": "call.decline", "call_id": incoming["call_id"]})
        assert (await tx).status == 603


async def test_an_authenticated_stranger_is_shown_as_its_account_not_its_from_name(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_trusted_networks=["192.0.2.0/24"])
    alice = await node.device("alice", "alice-phone")
    async with sip_client() as client:
        invite = named_invite(str(client.contact()), "Bank Support")
        challenge = await send(client, sip_port(node), invite)
        assert challenge.status == 407
        tx = client.send_request(
            authorize(invite, challenge, "carol", "looking-glass"), ("127.0.0.1", sip_port(node)), "UDP"
        )
        incoming = await alice.expect("call.incoming")
        assert incoming["caller"] == "sip:carol@voip.test" and incoming["caller_name"] == "sip:carol@voip.test"
        await alice.request({"type": "call.decline", "call_id": incoming["call_id"]})
        assert (await tx).status == 603
