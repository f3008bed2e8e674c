"""The endpoint's WebSocket flows (RFC 7118) with no HTTP server: the test plays the
server, handing frames in and reading what the endpoint sends out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sip.endpoint import SipEndpoint, TransactionUser, WebSocketFlow
from sip.message import URI, CSeq, Headers, NameAddr, Request, Response, parse_datagram
from sip.ratelimit import TokenBucketLimiter
from sip.transaction import Addr, RequestReceived

BROWSER = ("198.51.100.7", 50123)


class Tu(TransactionUser):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.requests: list[RequestReceived] = []
        self.closed: list[tuple[str, Addr]] = []

    async def on_request(self, event: RequestReceived) -> None:
        self.requests.append(event)
        self.endpoint.reply(event, 200)

    def on_flow_closed(self, transport: str, peer: Addr) -> None:
        self.closed.append((transport, peer))


class Socket:
    """What the HTTP server would be: frames out, and how it was closed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.close_frame: tuple[int, str] | None = None

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        self.close_frame = (code, reason)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[SipEndpoint, Tu]]:
    ep = SipEndpoint(
        "127.0.0.1", 0, public_host="sip.example.com", ws_port=8443, rate_limiter=TokenBucketLimiter(0.001, 3)
    )
    tu = Tu(ep)
    await ep.start(tu)
    yield ep, tu
    await ep.close()


def options(branch: str = "z9hG4bKws1") -> bytes:
    return (
        f"OPTIONS sip:sip.example.com SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch={branch}\r\n"
        "From: <sip:carol@sip.example.com>;tag=a1\r\nTo: <sip:sip.example.com>\r\n"
        f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def open_flow(ep: SipEndpoint, socket: Socket, peer: Addr = BROWSER, secure: bool = True) -> WebSocketFlow:
    return ep.open_websocket(peer, socket.send, socket.close, secure=secure)


CONTACT = URI("sip", user="k3x9", host="df7jal23ls0d.invalid", params={"transport": "ws"})


def invite(ep: SipEndpoint) -> Request:
    headers = Headers()
    headers.add("From", NameAddr(URI("sip", user="alice", host="sip.example.com"), params={"tag": "f1"}))
    headers.add("To", NameAddr(CONTACT))
    headers.add("Call-ID", "ws-invite-1")
    headers.add("CSeq", CSeq(1, "INVITE"))
    headers.add("Contact", ep.contact("WS"))
    return Request("INVITE", CONTACT, headers)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_text_frame_is_answered_over_its_flow(endpoint: tuple[SipEndpoint, Tu]) -> None:
    ep, tu = endpoint
    socket = Socket()
    flow = open_flow(ep, socket)
    flow.receive(options().decode())
    await settle()
    (event,) = tu.requests
    assert (event.transport, event.source) == ("WSS", BROWSER)
    assert not ep.trusts(event.source, event.transport)  # a browser never is
    (answer,) = [parse_datagram(data) for data in socket.sent]
    assert isinstance(answer, Response) and answer.status == 200
    assert answer.top_via.params.get("received") == BROWSER[0]


async def test_a_taken_address_gets_a_port_of_its_own(endpoint: tuple[SipEndpoint, Tu]) -> None:
    ep, _ = endpoint
    first, second, behind_proxy = Socket(), Socket(), Socket()
    a, b = open_flow(ep, first), open_flow(ep, second)
    c = open_flow(ep, behind_proxy, peer=("203.0.113.1", 0))
    assert a.peer == BROWSER and b.peer[0] == BROWSER[0] and b.peer[1] > 65535
    assert c.peer[1] > 65535 and c.peer != b.peer
    b.receive(options(branch="z9hG4bKsecond"))
    await settle()
    assert first.sent == [] and len(second.sent) == 1


async def test_requests_to_the_browser_go_over_its_flow_and_fail_once_it_closes(
    endpoint: tuple[SipEndpoint, Tu],
) -> None:
    ep, tu = endpoint
    socket = Socket()
    flow = open_flow(ep, socket, secure=False)
    tx = ep.send_request(invite(ep), flow.peer, "WS")
    await settle()
    (sent,) = [parse_datagram(data) for data in socket.sent]
    assert isinstance(sent, Request) and sent.top_via.transport == "WS"
    assert (sent.top_via.host, sent.top_via.port) == ("sip.example.com", 8443)
    assert str(ep.contact("WS").uri) == "sip:sip.example.com:8443;transport=ws"

    flow.closed()  # the tab closed before an answer
    response = await asyncio.wait_for(tx, 2)
    assert response.status == 503 and tx.synthetic
    assert tu.closed == [("WS", flow.peer)]
    assert not ep.connected("WS", flow.peer)

    # Never dialled: a `*.invalid` Contact with no open flow fails at once.
    again = ep.send_request(invite(ep))
    assert (await asyncio.wait_for(again, 2)).status == 503


async def test_garbage_closes_the_flow_with_the_reason(endpoint: tuple[SipEndpoint, Tu]) -> None:
    ep, tu = endpoint
    socket = Socket()
    flow = open_flow(ep, socket)
    flow.receive(b"\x00\x01 definitely not SIP")
    assert socket.close_frame is not None
    code, reason = socket.close_frame
    assert code == 1008 and reason.startswith("not a SIP message")
    assert not flow.open and tu.closed == [("WSS", BROWSER)]
    flow.receive(options())  # after the close: ignored
    await settle()
    assert tu.requests == []


async def test_a_keepalive_is_ignored_and_a_flood_closes(endpoint: tuple[SipEndpoint, Tu]) -> None:
    ep, tu = endpoint
    socket = Socket()
    flow = open_flow(ep, socket)
    flow.receive("\r\n\r\n")
    assert ep.stats["keepalives"] == 1
    for n in range(10):
        flow.receive(options(branch=f"z9hG4bKflood{n}"))
    await settle()
    # The bucket held 3 (one went on the keep-alive); then 3 more refusals close the flow.
    assert len(tu.requests) == 2
    assert socket.close_frame == (1008, "too many SIP messages")
