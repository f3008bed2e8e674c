"""SIP over WebSocket (RFC 7118) at `/v1/sip`: the subprotocol, one message per frame,
the same digest and registrar as UDP, requests to the client over its own socket, its
bindings gone with the socket, and the limits. A raw client speaks SIP through the
`websockets` library here; tests/browser/test_jssip.py runs JsSIP in Chromium."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sip.digest import authorize
from sip.message import Request, Response, Via, build_response, generate_branch, parse_datagram
from tests.conftest import RunningNode
from tests.sipcalls.conftest import ACCOUNTS, APP_SDP, DOMAIN, SipNodeFactory, until_unbound
from tests.sipcalls.uac import build

pytestmark = pytest.mark.on_cluster_too

CONTACT = "sip:k3x9@df7jal23ls0d.invalid;transport=ws"


def via() -> Via:
    return Via("WS", "df7jal23ls0d.invalid", None, {"branch": generate_branch()})


def sip_url(node: RunningNode) -> str:
    return node.base_url.replace("http://", "ws://") + "/v1/sip"


class WsPhone:
    """A browser-like SIP client: one socket, Via `WS <random>.invalid`, Contact `*.invalid`."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket

    async def send(self, message: Request | Response, binary: bool = False) -> None:
        data = message.serialise()
        await self.socket.send(data if binary else data.decode())

    async def next(self, timeout: float = 5) -> Request | Response:
        frame = await asyncio.wait_for(self.socket.recv(), timeout)
        return parse_datagram(frame.encode() if isinstance(frame, str) else frame)

    async def request(self, request: Request, binary: bool = False) -> Response:
        """Send `request` (a Via added if it has none); its final response (1xx skipped)."""
        if "Via" not in request.headers:
            request.headers.insert_first("Via", via())
        await self.send(request, binary)
        while True:
            message = await self.next()
            if isinstance(message, Response) and message.status >= 200:
                assert message.call_id == request.call_id
                return message

    async def register(self, user: str, password: str, expires: int = 300) -> Response:
        request = build(
            "REGISTER",
            f"sip:{DOMAIN}",
            user=user,
            to=f"sip:{user}@{DOMAIN}",
            contact=f'<{CONTACT}>;+sip.instance="<urn:uuid:{user}-browser>";reg-id=1',
            headers=[("Expires", str(expires))],
        )
        challenge = await self.request(request)
        assert challenge.status == 401, challenge
        return await self.request(authorize(request, challenge, user, password))


@asynccontextmanager
async def phone(node: RunningNode, **connect: Any) -> AsyncIterator[WsPhone]:
    async with websockets.connect(sip_url(node), subprotocols=["sip"], **connect) as socket:  # type: ignore[list-item]
        assert socket.subprotocol == "sip"
        yield WsPhone(socket)


async def closed_with(socket: Any) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(socket.recv(), 5)
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


async def test_the_subprotocol_must_be_sip(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    for protocols in (None, ["chat"]):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(sip_url(node), subprotocols=protocols)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 400
        assert b"subprotocol must be 'sip'" in refused.value.response.body


async def test_refused_when_sip_is_off(node: RunningNode) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(sip_url(node), subprotocols=["sip"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 404


async def test_a_plain_get_is_not_a_websocket(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        response = await http.get("/v1/sip")
    assert response.status_code in (400, 404, 426)


async def test_register_with_digest_then_an_app_call_rings_over_the_socket(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    assert node.node.sip is not None
    alice = await node.device("alice", "a-phone")
    async with phone(node) as carol:
        ok = await carol.register("carol", ACCOUNTS["carol"])
        assert ok.status == 200
        assert CONTACT in str(ok.headers.get("Contact"))
        bindings = await node.node.sip.registrar.bindings("carol")
        (binding,) = bindings.values()
        assert binding.transport == "WS" and binding.contact == CONTACT

        started = await alice.request({"type": "call.start", "callee": "carol", "sdp": APP_SDP})
        call_id = started["call_id"]
        invite = await carol.next()
        # To the Contact, over this socket: the host is `*.invalid`, nothing else reaches it.
        assert isinstance(invite, Request) and invite.method == "INVITE"
        assert str(invite.uri) == CONTACT
        assert invite.top_via.transport == "WS"
        assert invite.body.decode() == APP_SDP
        ringing = build_response(invite, 180, to_tag="brws1")
        await carol.send(ringing)
        await alice.expect("call.ringing", call_id=call_id)
        answer = build_response(invite, 200, to_tag="brws1")
        answer.headers.add("Contact", f"<{CONTACT}>")
        answer.headers.add("Content-Type", "application/sdp")
        answer.body = APP_SDP.encode()
        await carol.send(answer)
        await alice.expect("call.answered", call_id=call_id)
        ack = await carol.next()
        assert isinstance(ack, Request) and ack.method == "ACK"

        await alice.request({"type": "call.hangup", "call_id": call_id})
        bye = await carol.next()
        assert isinstance(bye, Request) and bye.method == "BYE"
        await carol.send(build_response(bye, 200))
    # The socket is gone: so is the binding registered over it.
    await until_unbound(node, "carol")


async def test_a_register_without_credentials_is_challenged_and_a_wrong_password_refused(
    sip_node: SipNodeFactory,
) -> None:
    node = await sip_node()
    async with phone(node) as carol:
        request = build("REGISTER", f"sip:{DOMAIN}", user="carol", to=f"sip:carol@{DOMAIN}", contact=f"<{CONTACT}>")
        challenge = await carol.request(request)
        assert challenge.status == 401
        assert "WWW-Authenticate" in challenge.headers
        wrong = authorize(request, challenge, "carol", "not-her-password")
        assert (await carol.request(wrong)).status == 401
    assert node.node.sip is not None
    assert await node.node.sip.registrar.bindings("carol") == {}


async def test_an_invite_from_a_websocket_is_challenged_even_from_a_trusted_network(sip_node: SipNodeFactory) -> None:
    """127.0.0.1 is a trusted network for UDP; a browser behind a proxy there is not."""
    node = await sip_node()
    async with phone(node) as carol:
        invite = build(
            "INVITE",
            f"sip:alice@{DOMAIN}",
            user="carol",
            contact=f"<{CONTACT}>",
            headers=[("Content-Type", "application/sdp")],
            body=APP_SDP.encode(),
        )
        response = await carol.request(invite)
        assert response.status == 407


async def test_binary_frames_carry_sip_too(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    async with phone(node) as carol:
        options = build("OPTIONS", f"sip:{DOMAIN}", user="carol", contact=f"<{CONTACT}>")
        response = await carol.request(options, binary=True)
        assert response.status == 200
        assert ("Allow", "REGISTER") in [(name, str(value)) for name, value in response.headers]
        assert response.top_via.transport == "WS"


async def test_a_malformed_request_is_answered_400_and_the_socket_stays(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    async with phone(node) as carol:
        bad = (
            "OPTIONS sip:voip.test SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bKbad1\r\n"
            "From: <sip:carol@voip.test>;tag=1\r\nTo: <sip:voip.test>\r\nCall-ID: bad1\r\n"
            "CSeq: not-a-number OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        await carol.socket.send(bad)
        # Its raw Via, From, To, Call-ID and CSeq copied back (§8.2.6.2), the bad CSeq too.
        answer = await asyncio.wait_for(carol.socket.recv(), 5)
        assert answer.startswith("SIP/2.0 400 ")
        assert "Call-ID: bad1\r\n" in answer and 'Warning: 399 - "invalid CSeq' in answer
        # Still open: a good request is answered.
        options = build("OPTIONS", f"sip:{DOMAIN}", user="carol")
        assert (await carol.request(options)).status == 200


async def test_bytes_that_are_not_sip_close_the_socket_with_a_reason(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    async with phone(node) as carol:
        await carol.socket.send(b"\x16\x03\x01\x00\xa5 hello, not SIP")
        code, reason = await closed_with(carol.socket)
    assert code == 1008
    assert reason is not None and reason.startswith("not a SIP message")


async def test_a_frame_over_the_limit_closes_1009(sip_node: SipNodeFactory) -> None:
    node = await sip_node(ws_max_frame_bytes=4096)
    async with phone(node, max_size=None) as carol:
        options = build("OPTIONS", f"sip:{DOMAIN}", user="carol", body=b"x" * 5000)
        options.headers.insert_first("Via", via())
        await carol.send(options)
        code, _ = await closed_with(carol.socket)
    assert code == 1009


async def test_a_flood_is_dropped_then_closed(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_rate=1, sip_burst=3)
    async with phone(node) as carol:
        for _ in range(3):
            assert (await carol.request(build("OPTIONS", f"sip:{DOMAIN}", user="carol"))).status == 200
        for _ in range(10):
            options = build("OPTIONS", f"sip:{DOMAIN}", user="carol")
            options.headers.insert_first("Via", via())
            await carol.send(options)
        code, reason = await closed_with(carol.socket)
    assert (code, reason) == (1008, "too many SIP messages")


async def test_too_many_sockets_are_refused_503(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_ws_max_connections=1)
    async with phone(node):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(sip_url(node), subprotocols=["sip"])  # type: ignore[list-item]
        assert refused.value.response.status_code == 503
    # The first one's end frees its place.
    for _ in range(100):
        try:
            async with phone(node):
                break
        except InvalidStatus:
            await asyncio.sleep(0.02)
    else:
        pytest.fail("the socket's place was not freed")


async def test_the_browser_hanging_up_by_closing_its_socket_ends_the_call(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    alice = await node.device("alice", "a-phone")
    async with phone(node) as carol:
        assert (await carol.register("carol", ACCOUNTS["carol"])).status == 200
        started = await alice.request({"type": "call.start", "callee": "carol", "sdp": APP_SDP})
        call_id = started["call_id"]
        invite = await carol.next()
        assert isinstance(invite, Request)
        answer = build_response(invite, 200, to_tag="brws2")
        answer.headers.add("Contact", f"<{CONTACT}>")
        await carol.send(answer)
        await alice.expect("call.answered", call_id=call_id)
        assert isinstance(await carol.next(), Request)  # the ACK
    await alice.expect("call.ended", call_id=call_id)


async def test_openapi_describes_the_socket(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        document = (await http.get("/openapi.json")).json()
    sip = document["x-websockets"]["/v1/sip"]
    assert sip["subprotocol"] == "sip"
    assert set(sip["refusals"]) == {"400", "404", "503"}
    assert {"1008", "1009"} <= set(sip["closes"])


async def test_a_browser_registered_on_one_node_is_rung_from_another(sip_node: SipNodeFactory) -> None:
    first, second = await sip_node(), await sip_node()
    alice = await second.device("alice", "a-phone")
    async with phone(first) as carol:
        assert (await carol.register("carol", ACCOUNTS["carol"])).status == 200
        started = await alice.request({"type": "call.start", "callee": "carol", "sdp": APP_SDP})
        invite = await carol.next()  # through the bus to the node holding the socket
        assert isinstance(invite, Request) and invite.method == "INVITE"
        await carol.send(build_response(invite, 603, to_tag="brws3"))  # a fork declines with 603
        ack = await carol.next()
        assert isinstance(ack, Request) and ack.method == "ACK"
    await alice.expect("call.declined", call_id=started["call_id"])


async def test_a_draining_node_closes_sip_sockets_1012_and_refuses_new_ones(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    assert node.node.sip is not None
    async with phone(node) as carol:
        assert (await carol.register("carol", ACCOUNTS["carol"])).status == 200
        await node.node.drain()
        code, reason = await closed_with(carol.socket)
    assert (code, reason) == (1012, "reconnect")
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(sip_url(node), subprotocols=["sip"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 503
    await until_unbound(node, "carol")
    assert node.node.sip.endpoint.websockets_open == 0


async def test_a_browser_caller_whose_socket_closes_while_ringing_cancels_the_call(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    alice = await node.device("alice", "a-phone")
    async with phone(node) as carol:
        invite = build(
            "INVITE",
            f"sip:alice@{DOMAIN}",
            user="carol",
            contact=f"<{CONTACT}>",
            headers=[("Content-Type", "application/sdp")],
            body=APP_SDP.encode(),
        )
        challenge = await carol.request(invite)
        assert challenge.status == 407
        await carol.send(authorize(invite, challenge, "carol", ACCOUNTS["carol"]))
        incoming = await alice.expect("call.incoming")
        assert incoming["caller"] == f"sip:carol@{DOMAIN}"
    # The tab closed while alice's phone rang: nothing can reach the caller any more.
    await alice.expect("call.cancelled", call_id=incoming["call_id"])
    timeline = await node.timeline(incoming["call_id"], lambda t: any(e.get("flow") == "closed" for e in t))
    assert any(e.get("flow") == "closed" for e in timeline)
