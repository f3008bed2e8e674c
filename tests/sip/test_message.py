"""Parser and serialiser units: URIs, addresses, Via, framing, limits."""

from __future__ import annotations

import time

import pytest

from sip.message import (
    URI,
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    StreamParser,
    Via,
    build_response,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_header_list,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: test/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_parse_typical_invite() -> None:
    msg = parse_datagram(INVITE)
    assert isinstance(msg, Request)
    assert msg.uri == URI("sip", user="bob", host="biloxi.example.com")
    assert msg.top_via.branch == "z9hG4bK776asdhds" and msg.top_via.has_rport
    assert msg.from_.display_name == "Alice" and msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.headers.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]
    assert msg.body == b"v=0\n"
    assert msg.content_type == "application/sdp"


def test_parse_is_fast_enough() -> None:
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        parse_datagram(INVITE)
    per_message = (time.perf_counter() - start) / n
    # Budget is 100 µs on a developer machine; allow slack for slow CI.
    assert per_message < 500e-6


@pytest.mark.parametrize(
    "text,expected",
    [
        ("sip:alice@atlanta.com", URI("sip", user="alice", host="atlanta.com")),
        (
            "SIPS:alice:secretword@atlanta.com;transport=tcp",
            URI("sips", user="alice", password="secretword", host="atlanta.com", params={"transport": "tcp"}),
        ),
        (
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            URI("sip", user="+1-212-555-1212", password="1234", host="gateway.com", params={"user": "phone"}),
        ),
        ("sip:alice@192.0.2.4:5061", URI("sip", user="alice", host="192.0.2.4", port=5061)),
        ("sip:[2001:db8::10]:5070;lr", URI("sip", host="[2001:db8::10]", port=5070, params={"lr": None})),
        ("sip:[::1:199.9.9.1]", URI("sip", host="[::1:199.9.9.1]")),
        (
            "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
            URI("sip", host="atlanta.com", params={"method": "REGISTER"}, headers="to=alice%40atlanta.com"),
        ),
        ("tel:+358-555-1234567;postd=pp22", URI("tel", user="+358-555-1234567", params={"postd": "pp22"})),
        ("mailto:someone@example.com", URI("mailto", opaque="someone@example.com")),
    ],
)
def test_uri_parse_and_serialise(text: str, expected: URI) -> None:
    uri = parse_uri(text)
    assert uri == expected
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "nocolon",
        "sip:alice@",
        "sip:alice@host:99999",
        "sip:alice@host:x",
        "sip:a b@host",
        "sip:[2001:db8::1",
        "sip:host;;lr",
        "sip:@host",
        "1sip:host",
    ],
)
def test_uri_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_name_addr_forms() -> None:
    a = parse_name_addr('"Alice \\"A\\"" <sip:alice@example.com;transport=udp>;tag=9;expires=60')
    assert a.display_name == 'Alice "A"' and a.uri.params == {"transport": "udp"}
    assert a.params == {"tag": "9", "expires": "60"}
    assert parse_name_addr(str(a)) == a
    b = parse_name_addr("sip:bob@example.com;tag=1")
    assert b.uri.params == {} and b.tag == "1" and b.display_name is None
    c = parse_name_addr("Anonymous User <sip:anon@anonymous.invalid>")
    assert c.display_name == "Anonymous User"
    star = parse_name_addr("*")
    assert star.wildcard and str(star) == "*"
    d = parse_name_addr("<sip:x@y>")
    d.tag = "abc"
    assert str(d) == "<sip:x@y>;tag=abc"
    d.tag = None
    assert str(d) == "<sip:x@y>"


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated <sip:a@b>',
        "<sip:a@b",
        "Bell, Alex <sip:a@b>",
        "< sip:a@b>",
        "<sip:a@b>;;tag=1",
        "<sip:a@b>;=x",
        "sip:a@b?x=y",
        '"x" sip:a@b',
        "<sip:a@b>;tag=",
    ],
)
def test_name_addr_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_name_addr(text)


def test_via_parsing() -> None:
    via = parse_via("SIP / 2.0 / udp  [2001:db8::9] : 5062 ;branch=z9hG4bKabc;received=192.0.2.1;rport=4000;ttl=1")
    assert (via.transport, via.host, via.port) == ("UDP", "[2001:db8::9]", 5062)
    assert via.branch == "z9hG4bKabc" and via.received == "192.0.2.1" and via.rport == 4000
    assert via.is_rfc3261_branch
    assert str(via) == "SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bKabc;received=192.0.2.1;rport=4000;ttl=1"
    assert not parse_via("SIP/2.0/UDP h;branch=z9hG4bK").is_rfc3261_branch
    for bad in ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host;rport=x", "SIP/2.0/UDP host;branch"]:
        with pytest.raises(ParseError):
            parse_via(bad)


def test_comma_splitting_respects_quotes_and_brackets() -> None:
    assert split_header_list('"A, B" <sip:a@x>, <sip:b@y;p=1,2>, sip:c@z') == [
        '"A, B" <sip:a@x>',
        "<sip:b@y;p=1,2>",
        "sip:c@z",
    ]
    assert split_header_list('"a \\", b", c') == ['"a \\", b"', "c"]


def test_multi_value_headers_split_and_authorization_kept_whole() -> None:
    raw = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com;branch=z9hG4bK2\r\n"
        b"f: <sip:u@example.com>;tag=1\r\nt: <sip:u@example.com>\r\ni: cid\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b'm: "A, B" <sip:u@1.2.3.4>;expires=60, <sip:u@5.6.7.8>\r\n'
        b'Authorization: Digest username="u", realm="r", nonce="n"\r\n'
        b"k: path, gruu\r\nl: 0\r\n\r\n"
    )
    msg = parse_datagram(raw)
    assert [v.host for v in msg.vias] == ["a.example.com", "b.example.com"]
    assert [c.display_name for c in msg.contacts] == ["A, B", None]
    assert msg.headers.get("Authorization") == 'Digest username="u", realm="r", nonce="n"'
    assert msg.headers.get_all("Supported") == ["path", "gruu"]
    assert msg.call_id == "cid"


def test_line_folding_with_tabs_and_lf_only_line_ends() -> None:
    raw = (
        b"OPTIONS sip:a@b SIP/2.0\n"
        b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\n"
        b"From: <sip:a@b>\n\t;tag=1\nTo: <sip:a@b>\nCall-ID: c\nCSeq: 1\n  OPTIONS\n\n"
    )
    msg = parse_datagram(raw)
    assert msg.from_.tag == "1" and msg.cseq == CSeq(1, "OPTIONS")


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"OPTIONS sip:a@b SIP/3.0\r\n\r\n", 505),
        (b"SIP/1.0 200 OK\r\n\r\n", 505),
        (b"OPTIONS sip:a@b HTTP/1.1\r\n\r\n", 400),
        (b"OPTIONS urn:x SIP/2.0\r\n\r\n", 416),
        (b"garbage", 400),
        (b"", 400),
        (b"\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\n continuation\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", 400),
        (b"SIP/2.0 99 Low\r\n\r\n", 400),
        (b"SIP/2.0 700 High\r\n\r\n", 400),
    ],
)
def test_start_line_and_header_errors(raw: bytes, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_datagram(raw)
    assert info.value.status == status


def test_oversize_datagram_is_513() -> None:
    with pytest.raises(ParseError) as info:
        parse_datagram(INVITE + b"x" * 70_000)
    assert info.value.status == 513
    with pytest.raises(ParseError) as info:
        parse_datagram(INVITE, max_size=100)
    assert info.value.status == 513


def test_serialise_sets_content_length_and_compact_names_expand() -> None:
    msg = parse_datagram(INVITE)
    msg.body = b"v=0\r\ns=-\r\n"
    data = msg.serialise()
    assert b"Content-Length: 10\r\n\r\nv=0" in data
    assert data.count(b"Content-Length") == 1
    assert parse_datagram(data).body == msg.body
    h = Headers([("v", "SIP/2.0/UDP h"), ("i", "x")])
    assert list(h) == [("Via", "SIP/2.0/UDP h"), ("Call-ID", "x")]
    assert "call-id" in h and h.get("I") == "x"


def test_headers_set_insert_remove() -> None:
    h = Headers([("X-A", "1"), ("X-B", "2"), ("x-a", "3")])
    h.set("x-A", "9")
    assert list(h) == [("x-A", "9"), ("X-B", "2")]
    h.insert_first("X-B", "0")
    assert h.get_all("x-b") == ["0", "2"]
    h.remove("x-b")
    assert len(h) == 1 and "X-B" not in h
    assert h == Headers([("X-A", "9")])


def test_build_response_copies_headers_and_adds_tag() -> None:
    req = parse_datagram(INVITE)
    assert isinstance(req, Request)
    resp = build_response(req, 180, to_tag="xyz")
    assert resp.reason == "Ringing" and resp.to.tag == "xyz"
    assert resp.vias == req.vias and resp.cseq == req.cseq and resp.call_id == req.call_id
    assert req.to.tag is None  # request untouched
    back = parse_datagram(resp.serialise())
    assert isinstance(back, Response) and back.status == 180


def test_build_messages_from_scratch_roundtrip() -> None:
    req = Request(
        "OPTIONS",
        URI("sip", user="bob", host="example.com"),
        Headers(
            [
                ("Via", Via("UDP", "10.0.0.1", 5060, {"branch": "z9hG4bKq", "rport": None})),
                ("From", NameAddr(URI("sip", user="a", host="x"), "A", {"tag": "t"})),
                ("To", NameAddr(URI("sip", user="bob", host="example.com"))),
                ("Call-ID", "abc"),
                ("CSeq", CSeq(7, "OPTIONS")),
                ("Max-Forwards", "70"),
            ]
        ),
    )
    back = parse_datagram(bytes(req))
    assert back == req


# --- stream framing ----------------------------------------------------------


def _options(i: int, body: bytes = b"") -> bytes:
    return (
        f"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{i}\r\n"
        f"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c{i}\r\nCSeq: {i} OPTIONS\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_stream_parser_chunks_and_keepalives() -> None:
    data = b"\r\n\r\n" + _options(1, b"hello") + b"\r\n\r\n" + _options(2) + _options(3, b"x\r\n\r\ny")
    for chunk in (1, 2, 3, 7, 64, len(data)):
        p = StreamParser()
        got = []
        for i in range(0, len(data), chunk):
            p.feed(data[i : i + chunk])
            got.extend(p.messages())
        assert [(m.call_id, m.body) for m in got] == [("c1", b"hello"), ("c2", b""), ("c3", b"x\r\n\r\ny")]


def test_stream_parser_waits_for_body() -> None:
    p = StreamParser()
    raw = _options(1, b"0123456789")
    p.feed(raw[:-3])
    assert p.next_message() is None
    p.feed(raw[-3:])
    msg = p.next_message()
    assert msg is not None and msg.body == b"0123456789"


def test_stream_parser_skips_a_bad_message_with_known_length() -> None:
    bad = _options(1, b"abc").replace(b"OPTIONS sip:a@b SIP/2.0", b"OPTIONS  sip:a@b SIP/2.0")
    p = StreamParser()
    p.feed(bad + _options(2))
    with pytest.raises(ParseError) as info:
        p.next_message()
    assert info.value.status == 400 and info.value.fatal is False  # type: ignore[attr-defined]
    msg = p.next_message()
    assert msg is not None and msg.call_id == "c2"


@pytest.mark.parametrize(
    "raw,status",
    [
        (_options(1).replace(b"Content-Length: 0", b"Content-Length: -1"), 400),
        (_options(1).replace(b"Content-Length: 0", b"Content-Length: 99999999"), 513),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 70_000, 513),
    ],
)
def test_stream_parser_fatal_errors(raw: bytes, status: int) -> None:
    p = StreamParser()
    p.feed(raw)
    with pytest.raises(ParseError) as info:
        p.next_message()
    assert info.value.status == status and info.value.fatal is True  # type: ignore[attr-defined]
    with pytest.raises(ParseError):
        p.next_message()


def test_stream_parser_missing_content_length_means_empty_body() -> None:
    raw = _options(1).replace(b"Content-Length: 0\r\n", b"")
    p = StreamParser()
    p.feed(raw + _options(2))
    assert [m.call_id for m in p.messages()] == ["c1", "c2"]


def test_list_headers_whose_value_may_be_empty() -> None:
    # RFC 3261 §25.1: Allow, Supported, Accept, Accept-Encoding and Accept-Language are
    # `[ element *(COMMA element) ]`; baresip sends "Supported:" with nothing after it.
    from sip.message import parse_datagram as parse

    head = (
        "INVITE sip:bob@voip.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKe\r\n"
        "From: <sip:alice@voip.test>;tag=1\r\nTo: <sip:bob@voip.test>\r\nCall-ID: e\r\n"
        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    )
    for name in ("Supported", "Allow", "Accept", "Accept-Encoding", "Accept-Language"):
        message = parse(f"{head}{name}:\r\nContent-Length: 0\r\n\r\n".encode())
        assert message.headers.get(name) == ""
    with pytest.raises(ParseError):
        parse(f"{head}Require:\r\nContent-Length: 0\r\n\r\n".encode())
    with pytest.raises(ParseError):
        parse(f"{head}Supported: timer,,100rel\r\nContent-Length: 0\r\n\r\n".encode())
