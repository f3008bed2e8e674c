"""The asyncio edge on loopback: two endpoints talking over UDP and TCP."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.dialog import Dialog, DialogState
from sip.digest import authorize
from sip.endpoint import SipEndpoint, TransactionUser, error_response, next_hop
from sip.message import URI, CSeq, Headers, NameAddr, Request, Response, parse_datagram
from sip.ratelimit import TokenBucketLimiter
from sip.transaction import RequestReceived, ResponseReceived, TimerConfig
from tests.sip.demo_tu import DemoTU, invite_request

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.2, timer_d=0.5)


class Recorder(TransactionUser):
    """A UAC-side TU: answers BYE/OPTIONS 200 and remembers everything."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.events: list[RequestReceived] = []
        self.stray: list[Response] = []

    async def on_request(self, event: RequestReceived) -> None:
        self.events.append(event)
        if event.request.method != "ACK":
            self.endpoint.reply(event, 200)

    def on_stray_response(self, event: ResponseReceived) -> None:
        self.stray.append(event.response)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SipEndpoint, DemoTU, SipEndpoint, Recorder]]:
    uas = SipEndpoint("127.0.0.1", 0, timers=FAST)
    uas_tu = DemoTU(uas)
    await uas.start(uas_tu)
    uac = SipEndpoint("127.0.0.1", 0, timers=FAST)
    uac_tu = Recorder(uac)
    await uac.start(uac_tu)
    yield uas, uas_tu, uac, uac_tu
    await uac.close()
    await uas.close()


async def place_call(uac: SipEndpoint, uas: SipEndpoint, transport: str, call_id: str) -> None:
    invite = invite_request(uas.contact(transport, "bob"), uac.contact(transport), call_id)
    ringing: list[Response] = []
    tx = uac.send_request(invite, on_provisional=ringing.append)
    response = await tx
    assert response.status == 200 and response.body.startswith(b"v=0")
    assert [r.status for r in ringing][-1] == 180
    assert tx.transport == transport
    dialog = Dialog.uac(invite, response)
    assert dialog.state is DialogState.CONFIRMED
    uac.send_ack(dialog.create_ack(invite))
    bye = dialog.create_request("BYE")
    done = await uac.send_request(bye)
    dialog.receive_response(bye, done)
    assert done.status == 200 and dialog.state is DialogState.TERMINATED


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_invite_ack_bye_between_two_endpoints(pair, transport: str) -> None:  # type: ignore[no-untyped-def]
    uas, uas_tu, uac, _ = pair
    await place_call(uac, uas, transport, f"call-{transport}")
    assert uas_tu.byes == 1 and len(uas_tu.dialogs) == 0
    assert uas_tu.requests == ["INVITE", "ACK", "BYE"]
    await asyncio.sleep(0.1)
    assert not uas.core.unacknowledged and uas.stats["dropped_unparseable"] == 0
    if transport == "TCP":
        assert ("TCP", ("127.0.0.1", uas.port)) in uac._conns


async def test_reinvite_within_the_dialog(pair) -> None:  # type: ignore[no-untyped-def]
    uas, _uas_tu, uac, _ = pair
    invite = invite_request(uas.contact("UDP"), uac.contact("UDP"), "call-reinvite")
    response = await uac.send_request(invite)
    dialog = Dialog.uac(invite, response)
    uac.send_ack(dialog.create_ack(invite))
    reinvite = dialog.create_request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    answer = await uac.send_request(reinvite)
    dialog.receive_response(reinvite, answer)
    assert answer.status == 200 and dialog.client_invite is None
    uac.send_ack(dialog.create_ack(reinvite))
    assert (await uac.send_request(dialog.create_request("BYE"))).status == 200


async def test_incoming_invite_answered_later_and_cancel(pair) -> None:  # type: ignore[no-untyped-def]
    uas, uas_tu, uac, _ = pair
    uas_tu.answer_after = None  # rings until someone decides
    invite = invite_request(uas.contact("UDP"), uac.contact("UDP"), "call-cancel")
    rang = asyncio.Event()
    tx = uac.send_request(invite, on_provisional=lambda r: rang.set() if r.status == 180 else None)
    await asyncio.wait_for(rang.wait(), 2)
    tx.cancel()
    final = await tx
    assert final.status == 487 and not tx.synthetic
    assert tx.cancel_transaction is not None and (await tx.cancel_transaction).status == 200
    assert [r.call_id for r in uas_tu.cancelled] == ["call-cancel"]
    assert not uas_tu.answer("call-cancel")  # too late: the device answers after the CANCEL
    # A CANCEL for nothing is a 481.
    stray = invite_request(uas.contact("UDP"), uac.contact("UDP"), "call-none")
    uac._prepare(stray, "UDP")
    from sip.transaction import build_cancel

    assert (await uac.send_request(build_cancel(stray))).status == 481


async def test_answer_after_ringing_and_cancel_before_provisional_waits(pair) -> None:  # type: ignore[no-untyped-def]
    uas, uas_tu, uac, _ = pair
    uas_tu.answer_after = None
    invite = invite_request(uas.contact("UDP"), uac.contact("UDP"), "call-later")
    tx = uac.send_request(invite)
    deadline = time.monotonic() + 5
    while "call-later" not in uas_tu.pending:
        assert time.monotonic() < deadline, "the INVITE never reached the UAS's TU"
        await asyncio.sleep(0.01)
    assert uas_tu.answer("call-later")
    response = await tx
    assert response.status == 200
    dialog = Dialog.uac(invite, response)
    uac.send_ack(dialog.create_ack(invite))
    tx.cancel()  # after the final response: nothing happens
    assert tx.cancel_transaction is None
    assert (await uac.send_request(dialog.create_request("BYE"))).status == 200


async def test_outgoing_invite_with_digest_challenge(pair) -> None:  # type: ignore[no-untyped-def]
    uas, uas_tu, uac, _ = pair
    uas_tu.challenge_invites = True
    uas_tu.auth.algorithms = ("SHA-256", "MD5")
    invite = invite_request(uas.contact("UDP"), uac.contact("UDP"), "call-auth")
    challenge = await uac.send_request(invite)
    assert challenge.status == 401  # the transaction layer has ACKed it
    retry = authorize(invite, challenge, "alice", "wonderland")
    assert retry.cseq.seq == 2
    response = await uac.send_request(retry)
    assert response.status == 200
    dialog = Dialog.uac(retry, response)
    uac.send_ack(dialog.create_ack(retry))
    assert (await uac.send_request(dialog.create_request("BYE"))).status == 200
    assert uas_tu.requests.count("INVITE") == 2 and uas_tu.requests.count("ACK") == 1


async def test_register_challenge_then_200(pair) -> None:  # type: ignore[no-untyped-def]
    uas, uas_tu, uac, _ = pair
    headers = Headers()
    headers.add("From", NameAddr(URI("sip", user="alice", host="demo.test"), params={"tag": "r1"}))
    headers.add("To", NameAddr(URI("sip", user="alice", host="demo.test")))
    headers.add("Call-ID", "reg-1")
    headers.add("CSeq", CSeq(1, "REGISTER"))
    headers.add("Contact", uac.contact("TCP", "alice"))
    register = Request("REGISTER", URI("sip", host="127.0.0.1", port=uas.port, params={"transport": "tcp"}), headers)
    challenge = await uac.send_request(register)
    assert challenge.status == 401
    ok = await uac.send_request(authorize(register, challenge, "alice", "wonderland"))
    assert ok.status == 200 and ok.contacts[0].uri.params == {"transport": "tcp"}
    assert uas_tu.registered["alice"].startswith("sip:alice@127.0.0.1")


async def test_unknown_method_is_501_and_options_200(pair) -> None:  # type: ignore[no-untyped-def]
    uas, _, uac, _ = pair
    for method, status in (("PUBLISH", 501), ("OPTIONS", 200)):
        headers = Headers()
        headers.add("From", NameAddr(URI("sip", host="demo.test"), params={"tag": "x"}))
        headers.add("To", NameAddr(URI("sip", host="demo.test")))
        headers.add("Call-ID", f"m-{method}")
        headers.add("CSeq", CSeq(1, method))
        response = await uac.send_request(Request(method, URI("sip", host="127.0.0.1", port=uas.port), headers))
        assert response.status == status
    assert "INVITE" in str(response.headers.get("Allow"))


async def test_in_dialog_request_for_unknown_dialog_is_481(pair) -> None:  # type: ignore[no-untyped-def]
    uas, _, uac, _ = pair
    headers = Headers()
    headers.add("From", NameAddr(URI("sip", host="demo.test"), params={"tag": "x"}))
    headers.add("To", NameAddr(URI("sip", host="demo.test"), params={"tag": "gone"}))
    headers.add("Call-ID", "no-such-dialog")
    headers.add("CSeq", CSeq(7, "BYE"))
    response = await uac.send_request(Request("BYE", URI("sip", host="127.0.0.1", port=uas.port), headers))
    assert response.status == 481


async def test_timeout_and_connection_refused_become_408_and_503() -> None:
    ep = SipEndpoint("127.0.0.1", 0, timers=TimerConfig(t1=0.01, t2=0.04))
    await ep.start(Recorder(ep))
    try:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        closed_port = silent.getsockname()[1]
        headers = Headers()
        headers.add("From", NameAddr(URI("sip", host="demo.test"), params={"tag": "x"}))
        headers.add("To", NameAddr(URI("sip", host="demo.test")))
        headers.add("Call-ID", "timeout")
        headers.add("CSeq", CSeq(1, "OPTIONS"))
        tx = ep.send_request(Request("OPTIONS", URI("sip", host="127.0.0.1", port=closed_port), headers))
        response = await asyncio.wait_for(tx.final(), 5)
        assert response.status == 408 and tx.synthetic
        silent.close()
        headers.set("Call-ID", "refused")
        uri = URI("sip", host="127.0.0.1", port=closed_port, params={"transport": "tcp"})
        tx = ep.send_request(Request("OPTIONS", uri, headers.copy()))
        assert (await asyncio.wait_for(tx.final(), 5)).status == 503 and tx.synthetic
    finally:
        await ep.close()


class RawUdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


async def raw_udp() -> tuple[asyncio.DatagramTransport, RawUdp]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(RawUdp, local_addr=("127.0.0.1", 0))
    return transport, proto  # type: ignore[return-value]


async def next_datagram(proto: RawUdp, timeout: float = 2.0) -> Request | Response:
    return parse_datagram(await asyncio.wait_for(proto.queue.get(), timeout))


def raw_invite(port: int, branch: str = "z9hG4bKraw1", call_id: str = "raw-call") -> bytes:
    return (
        f"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@demo.test>;tag=raw\r\nTo: <sip:bob@demo.test>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_2xx_retransmitted_until_ack_and_rport_filled(pair) -> None:  # type: ignore[no-untyped-def]
    uas, _uas_tu, _, _ = pair
    sock, proto = await raw_udp()
    try:
        port = sock.get_extra_info("sockname")[1]
        sock.sendto(raw_invite(port), ("127.0.0.1", uas.port))
        statuses = []
        ok: Response | None = None
        while len([s for s in statuses if s == 200]) < 3:
            msg = await next_datagram(proto)
            assert isinstance(msg, Response)
            statuses.append(msg.status)
            if msg.status == 200:
                ok = msg
        assert 180 in statuses
        assert ok is not None and ok.top_via.rport == port and ok.top_via.received == "127.0.0.1"
        ack = (
            f"ACK sip:bob@127.0.0.1:{uas.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKack1\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:a@demo.test>;tag=raw\r\nTo: {ok.headers.get('To')}\r\n"
            "Call-ID: raw-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        sock.sendto(ack, ("127.0.0.1", uas.port))
        await asyncio.sleep(0.3)
        while not proto.queue.empty():
            proto.queue.get_nowait()  # in flight before the ACK
        await asyncio.sleep(0.5)
        assert proto.queue.empty() and not uas.core.unacknowledged
    finally:
        sock.close()


async def test_no_ack_reports_ack_timeout(pair) -> None:  # type: ignore[no-untyped-def]
    uas, uas_tu, _, _ = pair
    sock, _proto = await raw_udp()
    try:
        port = sock.get_extra_info("sockname")[1]
        sock.sendto(raw_invite(port, call_id="no-ack"), ("127.0.0.1", uas.port))
        await asyncio.sleep(64 * FAST.t1 + 0.5)
        assert [r.call_id for r in uas_tu.ack_timeouts] == ["no-ack"]
    finally:
        sock.close()


async def test_parse_errors_answered_400_or_dropped(pair) -> None:  # type: ignore[no-untyped-def]
    uas, _, _, _ = pair
    sock, proto = await raw_udp()
    try:
        port = sock.get_extra_info("sockname")[1]
        bad = raw_invite(port).replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
        sock.sendto(bad, ("127.0.0.1", uas.port))
        response = await next_datagram(proto)
        assert isinstance(response, Response) and response.status == 400
        assert response.call_id == "raw-call" and "Warning" in response.headers
        sock.sendto(b"garbage\r\n\r\n", ("127.0.0.1", uas.port))
        sock.sendto(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", ("127.0.0.1", uas.port))
        sock.sendto(b"\r\n\r\n", ("127.0.0.1", uas.port))
        version = raw_invite(port).replace(b"INVITE sip:bob@127.0.0.1 SIP/2.0", b"INVITE sip:bob@127.0.0.1 SIP/7.0")
        sock.sendto(version, ("127.0.0.1", uas.port))
        response = await next_datagram(proto)
        assert isinstance(response, Response) and response.status == 505
        await asyncio.sleep(0.05)
        assert uas.stats["dropped_unparseable"] == 2 and uas.stats["keepalives"] == 1
        assert uas.stats["rejected_unparseable"] == 2
    finally:
        sock.close()


async def test_oversize_datagram_is_513() -> None:
    ep = SipEndpoint("127.0.0.1", 0, timers=FAST, max_datagram_size=1500)
    await ep.start(Recorder(ep))
    sock, proto = await raw_udp()
    try:
        port = sock.get_extra_info("sockname")[1]
        big = raw_invite(port).replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 2000\r\n\r\n" + b"x" * 2000)
        sock.sendto(big, ("127.0.0.1", ep.port))
        response = await next_datagram(proto)
        assert isinstance(response, Response) and response.status == 513
    finally:
        sock.close()
        await ep.close()


async def test_tcp_parse_error_keeps_the_connection_and_fatal_closes_it(pair) -> None:  # type: ignore[no-untyped-def]
    uas, _, _, _ = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", uas.port)
    try:
        bad = raw_invite(5999).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP").replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
        writer.write(bad)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"SIP/2.0 400")
        options = bad.replace(b"INVITE sip", b"OPTIONS sip").replace(b"CSeq: 1 BYE", b"CSeq: 1 OPTIONS")
        writer.write(options)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"SIP/2.0 200")  # same connection still works
        writer.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed: framing is lost
    finally:
        writer.close()


async def test_rate_limit_drops_a_flood_from_one_source() -> None:
    ep = SipEndpoint("127.0.0.1", 0, timers=FAST, rate_limiter=TokenBucketLimiter(rate=1.0, burst=5))
    tu = DemoTU(ep)
    await ep.start(tu)
    sock, proto = await raw_udp()
    try:
        port = sock.get_extra_info("sockname")[1]
        for i in range(50):
            options = raw_invite(port, branch=f"z9hG4bKflood{i}", call_id=f"flood-{i}")
            options = options.replace(b"INVITE sip", b"OPTIONS sip").replace(b"1 INVITE", b"1 OPTIONS")
            sock.sendto(options, ("127.0.0.1", ep.port))
        await asyncio.sleep(0.3)
        assert proto.queue.qsize() == 5
        assert ep.stats["dropped_rate_limited"] == 45
    finally:
        sock.close()
        await ep.close()


def test_token_bucket_refills_per_source() -> None:
    limiter = TokenBucketLimiter(rate=2.0, burst=2, max_sources=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 0.0)
    assert limiter.allow("a", 0.5) and not limiter.allow("a", 0.5)
    limiter.allow("c", 0.5)
    assert len(limiter) == 2
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate=0, burst=1)


def test_error_response_and_next_hop() -> None:
    head = (
        "INVITE sip:x SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        "f: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\ni: c1\r\nCSeq: 1 INVITE"
    )
    data = error_response(head, 400, "bad")
    assert data is not None
    response = parse_datagram(data)
    assert isinstance(response, Response) and response.status == 400 and response.call_id == "c1"
    assert error_response(head.replace("INVITE sip", "ACK sip"), 400) is None
    assert error_response("SIP/2.0 200 OK\r\n", 400) is None
    assert error_response(head.replace("i: c1\r\n", ""), 400) is None
    request = parse_datagram(raw_invite(5070))
    assert isinstance(request, Request)
    assert next_hop(request) == ("127.0.0.1", 5060, "UDP")
    request.headers.add("Route", NameAddr(URI("sips", host="proxy.example.com", params={"lr": None})))
    assert next_hop(request) == ("proxy.example.com", 5061, "TLS")
    request.headers.set("Route", NameAddr(URI("sip", host="[::1]", port=5080, params={"lr": None, "transport": "tcp"})))
    assert next_hop(request) == ("::1", 5080, "TCP")


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_call_over_tls(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)
    uas = SipEndpoint("127.0.0.1", 0, timers=FAST, tls_server_context=server_ctx, tls_port=0)
    await uas.start(DemoTU(uas))
    uac = SipEndpoint("127.0.0.1", 0, timers=FAST, tls_client_context=client_ctx)
    await uac.start(Recorder(uac))
    try:
        assert uas.contact("TLS").uri.params == {"transport": "tls"} and uas.tls_port
        await place_call(uac, uas, "TLS", "call-tls")
        assert ("TLS", ("127.0.0.1", uas.tls_port)) in uac._conns
    finally:
        await uac.close()
        await uas.close()
