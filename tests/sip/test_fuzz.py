"""Property tests: the parser raises nothing but ParseError, never hangs,
and parse(serialise(m)) is a fixed point."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    parse_datagram,
)

TORTURE = sorted((Path(__file__).parent / "torture").glob("*.dat"))
SEEDS = [p.read_bytes() for p in TORTURE]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_parse_error(data: bytes) -> Request | Response | None:
    try:
        msg = parse_datagram(data)
        msg.validate()
        return msg
    except ParseError:
        return None


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    parse_or_parse_error(data)


sip_ish = st.lists(
    st.sampled_from(
        [
            b"INVITE ",
            b"SIP/2.0",
            b" ",
            b"\r\n",
            b"\r\n ",
            b":",
            b";",
            b",",
            b"<",
            b">",
            b'"',
            b"\\",
            b"sip:",
            b"@",
            b"[",
            b"]",
            b"=",
            b"Via",
            b"v",
            b"To",
            b"From",
            b"Call-ID",
            b"CSeq",
            b"Content-Length",
            b"l",
            b"m",
            b"Contact",
            b"tag",
            b"branch=z9hG4bK",
            b"1",
            b"65536",
            b"-",
            b"\t",
            b"\x00",
            b"\xff",
            b"200",
            b"UDP",
            b"/",
            b"?",
            b"%",
            b"a",
        ]
    ),
    max_size=120,
).map(b"".join)


@FUZZ
@given(sip_ish)
def test_sip_shaped_garbage_only_raises_parse_error(data: bytes) -> None:
    parse_or_parse_error(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_torture_messages_only_raise_parse_error(seed: bytes, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.sampled_from([b"\r\n", b" ", b",", b";", b'"', b"<", b":", b"\r\n "]))
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    msg = parse_or_parse_error(bytes(buf))
    if msg is not None:
        again = parse_datagram(msg.serialise())
        assert again.serialise() == msg.serialise()


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.integers(1, 300), max_size=20))
def test_stream_parser_never_raises_other_errors(seed: bytes, cuts: list[int]) -> None:
    p = StreamParser()
    pos = 0
    for cut in [*cuts, len(seed)]:
        p.feed(seed[pos : pos + cut])
        pos += cut
        try:
            list(p.messages())
        except ParseError as err:
            if getattr(err, "fatal", True):
                return


token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=12
)
hostname = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8), min_size=1, max_size=3
).map(".".join)
host = st.one_of(
    hostname,
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[::1]", "[2001:db8::5]"]),
)
port = st.one_of(st.none(), st.integers(1, 65535))
param_value = st.one_of(st.none(), token)
params = st.dictionaries(token.map(str.lower), param_value, max_size=3)
user = st.one_of(
    st.none(),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/%", min_size=1, max_size=12).filter(
        lambda s: "%" not in s
    ),
)
sip_uri = st.builds(URI, scheme=st.sampled_from(["sip", "sips"]), user=user, host=host, port=port, params=params)
display = st.one_of(
    st.none(),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x4FF, exclude_characters="\x7f"),
        min_size=1,
        max_size=15,
    ),
)
name_addr = st.builds(NameAddr, uri=sip_uri, display_name=display, params=params)
via = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "WS"]),
    host=host,
    port=port,
    # A drawn parameter may be named "branch" or "rport" too, with a value the parser rightly
    # refuses (none, or not a port): those two are the Via's own.
    params=st.builds(
        lambda b, extra: {**{k: v for k, v in extra.items() if k not in ("branch", "rport")}, "branch": "z9hG4bK" + b},
        token,
        params,
    ),
)
extra_header = st.tuples(
    token.map(lambda t: "X-" + t),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "REGISTER", "MESSAGE"]) | token)
    h = Headers()
    for v in draw(st.lists(via, min_size=1, max_size=3)):
        h.add("Via", v)
    h.add("From", draw(name_addr))
    h.add("To", draw(name_addr))
    h.add("Call-ID", draw(token))
    h.add("CSeq", CSeq(draw(st.integers(0, 2**31 - 1)), method))
    h.add("Max-Forwards", str(draw(st.integers(0, 255))))
    for c in draw(st.lists(name_addr, max_size=2)):
        h.add("Contact", c)
    for name, value in draw(st.lists(extra_header, max_size=3)):
        h.add(name, value)
    return Request(method, draw(sip_uri), h, draw(st.binary(max_size=50)))


@FUZZ
@given(requests())
def test_request_roundtrip(req: Request) -> None:
    data = req.serialise()
    parsed = parse_datagram(data)
    assert parsed == req
    assert parsed.serialise() == data
    stream = StreamParser()
    stream.feed(data + data)
    assert list(stream.messages()) == [parsed, parsed]


@FUZZ
@given(
    requests(),
    st.integers(100, 699),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x4FF), max_size=20),
)
def test_response_roundtrip(req: Request, status: int, reason: str) -> None:
    resp = Response(status, reason.strip(), req.headers.copy(), req.body)
    resp.headers.remove("Max-Forwards")
    data = resp.serialise()
    assert parse_datagram(data) == resp
