"""Issue 8, item 1: a captured SIP digest header is worth nothing a second time.

Against a real node (real sockets, real Redis): carol registers; her Authorization header,
sent again word for word from another socket with a new Call-ID and the attacker's
Contact, is re-challenged with stale=true, and carol's binding is as it was, even when the
replay says `Expires: 0`. The same for an INVITE's Proxy-Authorization from an untrusted
network (407), through either of two nodes. An honest client that counts up on the same
nonce is still accepted, and a nonce older than SIP_NONCE_TTL is refused as stale."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sip.digest import Challenge, answer_challenge, authorize, parse_challenge, parse_credentials
from sip.endpoint import SipEndpoint
from sip.message import Request, Response
from tests.conftest import RunningNode
from tests.sipcalls.conftest import (
    APP_SDP,
    DOMAIN,
    SipNodeFactory,
    sip_node,  # noqa: F401  (the fixture)
    sip_port,
)
from tests.sipcalls.uac import Recorder, build

CAROL_CONTACT = "<sip:carol@127.0.0.1:5997>"
ATTACKER_CONTACT = "<sip:carol@127.0.0.1:6666>"


@asynccontextmanager
async def client_at(host: str) -> AsyncIterator[SipEndpoint]:
    """A SIP client on its own socket at `host` (any 127.0.0.x is loopback on Linux)."""
    endpoint = SipEndpoint(host, 0, transports=("UDP",))
    await endpoint.start(Recorder(endpoint))
    try:
        yield endpoint
    finally:
        await endpoint.close()


async def send_to(client: SipEndpoint, port: int, request: Request) -> Response:
    return await client.send_request(request, ("127.0.0.1", port), "UDP")


def register_request(contact: str, expires: int = 300) -> Request:
    return build(
        "REGISTER",
        f"sip:{DOMAIN}",
        user="carol",
        to=f"sip:carol@{DOMAIN}",
        contact=contact,
        headers=[("Expires", str(expires))],
    )


def replayed(request: Request, header: str, value: str) -> Request:
    request.headers.add(header, value)
    return request


def challenge_of(response: Response) -> Challenge:
    name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
    return parse_challenge(str(response.headers.get(name)))


async def carol_registers(node: RunningNode) -> str:
    """carol's real phone registers; the Authorization header that did it."""
    async with client_at("127.0.0.1") as phone:
        request = register_request(CAROL_CONTACT)
        challenge = await send_to(phone, sip_port(node), request)
        assert challenge.status == 401
        authorized = authorize(request, challenge, "carol", "looking-glass")
        ok = await send_to(phone, sip_port(node), authorized)
        assert ok.status == 200
        return str(authorized.headers.get("Authorization"))


async def carol_contacts(node: RunningNode) -> list[str]:
    registrar = node.node.sip.registrar  # type: ignore[union-attr]
    return sorted(b.contact for b in (await registrar.bindings("carol")).values())


async def test_replayed_register_gets_a_fresh_challenge_and_changes_nothing(
    sip_node: SipNodeFactory,
) -> None:
    node = await sip_node()
    captured = await carol_registers(node)
    before = await carol_contacts(node)
    presence_before = await node.node.stores.devices.reachable("carol")
    assert before == ["sip:carol@127.0.0.1:5997"]
    captured_nonce = parse_credentials(captured).nonce

    async with client_at("127.0.0.2") as attacker:
        for expires in (300, 0):  # take the registration over; then remove it
            answer = await send_to(
                attacker,
                sip_port(node),
                replayed(register_request(ATTACKER_CONTACT, expires), "Authorization", captured),
            )
            assert answer.status == 401, answer
            fresh = challenge_of(answer)
            # The nonce itself is still young: stale says "your count was used, retry".
            assert fresh.stale and fresh.nonce != captured_nonce
            assert await carol_contacts(node) == before
    assert await node.node.stores.devices.reachable("carol") == presence_before


async def test_a_replay_through_another_node_is_refused_too(sip_node: SipNodeFactory) -> None:
    """The count lives in Redis: node B refuses what node A accepted."""
    node_a = await sip_node()
    node_b = await sip_node()
    captured = await carol_registers(node_a)
    async with client_at("127.0.0.2") as attacker:
        answer = await send_to(
            attacker, sip_port(node_b), replayed(register_request(ATTACKER_CONTACT), "Authorization", captured)
        )
    assert answer.status == 401 and challenge_of(answer).stale
    assert await carol_contacts(node_b) == ["sip:carol@127.0.0.1:5997"]


async def test_counting_up_on_one_nonce_is_still_accepted(sip_node: SipNodeFactory) -> None:
    """RFC 7616 §3.4: a client may reuse a nonce with nc 2, 3...; each count once."""
    node = await sip_node()
    port = sip_port(node)
    async with client_at("127.0.0.1") as phone:
        first = register_request(CAROL_CONTACT)
        challenge = challenge_of(await send_to(phone, port, first))
        statuses = []
        for nc in (1, 2, 3, 2):
            request = register_request(CAROL_CONTACT)
            creds = answer_challenge(challenge, "REGISTER", str(request.uri), "carol", "looking-glass", nc=nc)
            statuses.append((await send_to(phone, port, replayed(request, "Authorization", str(creds)))).status)
    assert statuses == [200, 200, 200, 401]


async def test_an_expired_nonce_is_stale(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_nonce_ttl=30)
    digest = node.node.sip.registrar.digest  # type: ignore[union-attr]
    issued_long_ago = Challenge(digest.realm, digest.make_nonce(time.time() - 31), "MD5")
    request = register_request(CAROL_CONTACT)
    creds = answer_challenge(issued_long_ago, "REGISTER", str(request.uri), "carol", "looking-glass")
    async with client_at("127.0.0.1") as phone:
        answer = await send_to(phone, sip_port(node), replayed(request, "Authorization", str(creds)))
    assert answer.status == 401 and challenge_of(answer).stale
    assert await carol_contacts(node) == []


async def test_replayed_invite_credentials_get_407(sip_node: SipNodeFactory) -> None:
    """From outside the trusted networks an INVITE must carry Proxy-Authorization; the one
    that started carol's call, replayed on a new INVITE from another socket, starts
    nothing."""
    node = await sip_node(sip_trusted_networks=["127.0.0.1/32"])
    port = sip_port(node)
    bob = await node.device("bob", "bob-phone")
    async with client_at("127.0.0.3") as carol, client_at("127.0.0.4") as attacker:
        invite = build(
            "INVITE",
            f"sip:bob@{DOMAIN}",
            user="carol",
            contact="<sip:carol@127.0.0.3>",
            headers=[("Content-Type", "application/sdp")],
            body=APP_SDP.encode(),
        )
        challenge = await send_to(carol, port, invite)
        assert challenge.status == 407
        authorized = authorize(invite, challenge, "carol", "looking-glass")
        captured = str(authorized.headers.get("Proxy-Authorization"))
        call = carol.send_request(authorized, ("127.0.0.1", port), "UDP")
        incoming = await bob.expect("call.incoming", timeout=10)
        assert incoming["caller"] == f"sip:carol@{DOMAIN}"

        replay = build(
            "INVITE",
            f"sip:bob@{DOMAIN}",
            user="carol",
            contact="<sip:carol@127.0.0.4>",
            headers=[("Content-Type", "application/sdp"), ("Proxy-Authorization", captured)],
            body=APP_SDP.encode(),
        )
        answer = await send_to(attacker, port, replay)
        assert answer.status == 407 and challenge_of(answer).stale
        await bob.silent(1.0)  # no second call

        call.cancel()
        assert (await asyncio.wait_for(call.final(), 10)).status == 487
    assert replay.call_id != invite.call_id
    assert replay.call_id not in node.node.sip.legs  # type: ignore[union-attr]
