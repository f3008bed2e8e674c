"""RFC 4475 §3 torture messages: each is parsed correctly or rejected with
the status the RFC expects, never a crash.  Files are bit-exact (CRLF);
tests/sip/torture/README.md lists the ones with unusual octets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.message import ParseError, Request, Response, StreamParser, parse_datagram

TORTURE = Path(__file__).parent / "torture"

VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    # Application-layer cases (§3.3): syntactically fine, the TU decides.
    "badbranch",
    "baddate",
    "bext01",
    "invut",
    "regaut01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
    "unksm2",
]
REJECTED = {
    "badinv01": 400,
    "clerr": 400,
    "ncl": 400,
    "scalar02": 400,
    "scalarlg": 400,
    "quotbal": 400,
    "ltgtruri": 400,
    "lwsruri": 400,
    "lwsstart": 400,
    "trws": 400,
    "escruri": 400,
    "regbadct": 400,
    "badaspec": 400,
    "baddn": 400,
    "badvers": 505,
    "mismatch01": 400,
    "mismatch02": 400,
    "bigcode": 400,
    "insuf": 400,
    "unkscm": 416,
    "novelsc": 416,
    "multi01": 400,
    "mcl01": 400,
}


def load(name: str) -> bytes:
    return (TORTURE / f"{name}.dat").read_bytes()


def test_corpus_is_complete() -> None:
    names = {p.stem for p in TORTURE.glob("*.dat")}
    assert names == set(VALID) | set(REJECTED)
    assert len(names) == 49


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_parse_and_roundtrip(name: str) -> None:
    msg = parse_datagram(load(name))
    msg.validate()
    again = parse_datagram(msg.serialise())
    assert again.serialise() == msg.serialise()


@pytest.mark.parametrize("name,status", sorted(REJECTED.items()))
def test_invalid_messages_rejected_with_status(name: str, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_datagram(load(name)).validate()
    assert info.value.status == status


def test_wsinv_whitespace_folding_and_compact_forms() -> None:
    msg = parse_datagram(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri.user == "vivekg" and msg.uri.params == {"unknownparam": None}
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq.seq == 9 and msg.cseq.method == "INVITE"
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert not vias[0].is_rfc3261_branch
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    (route,) = msg.routes
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert len(msg.body) == 150


def test_intmeth_unusual_characters() -> None:
    msg = parse_datagram(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.uri.host == "example.com"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_are_kept_verbatim() -> None:
    esc01 = parse_datagram(load("esc01"))
    assert isinstance(esc01, Request)
    assert esc01.uri.user == "sips%3Auser%40example.com" and esc01.uri.host == "example.net"
    assert esc01.contacts[0].uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    esc02 = parse_datagram(load("esc02"))
    assert isinstance(esc02, Request)
    assert esc02.method == "RE%47IST%45R"
    assert len(esc02.contacts) == 2  # C%6Fntact is an extension header, not Contact
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    escnull = parse_datagram(load("escnull"))
    assert [c.uri.user for c in escnull.contacts] == ["%00", "%00%00"]


def test_semiuri_and_lwsdisp() -> None:
    semi = parse_datagram(load("semiuri"))
    assert isinstance(semi, Request)
    assert semi.uri.user == "user;par=u%40example.net" and semi.uri.params == {}
    assert semi.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]
    lws = parse_datagram(load("lwsdisp"))
    assert lws.from_.display_name == "caller"


def test_longreq_many_vias_and_long_values() -> None:
    msg = parse_datagram(load("longreq"))
    assert len(msg.vias) == 34
    assert msg.vias[-1].received == "192.0.2.5"
    assert msg.to.uri.port == 6000
    assert msg.from_.tag == "12" + "982" * 50 + "424"


def test_dblreq_ignores_trailing_octets_in_datagram() -> None:
    msg = parse_datagram(load("dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_transports_mpart_and_responses() -> None:
    msg = parse_datagram(load("transports"))
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    mp = parse_datagram(load("mpart01"))
    assert len(mp.body) == 553 and mp.top_via.has_rport and mp.top_via.rport is None
    unreason = parse_datagram(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.status == 200 and unreason.reason.endswith("простое")
    noreason = parse_datagram(load("noreason"))
    assert isinstance(noreason, Response) and noreason.status == 100 and noreason.reason == ""


def test_application_layer_cases() -> None:
    unksm2 = parse_datagram(load("unksm2"))
    assert unksm2.to.uri.scheme == "isbn" and unksm2.to.uri.opaque == "2983792873"
    assert unksm2.contacts[0].uri.scheme == "name"
    c1 = parse_datagram(load("cparam01")).contacts[0]
    assert c1.params == {"unknownparam": None} and c1.uri.params == {}
    c2 = parse_datagram(load("cparam02")).contacts[0]
    assert c2.params == {} and c2.uri.params == {"unknownparam": None}
    reg = parse_datagram(load("regescrt")).contacts[0]
    assert reg.uri.headers == "Route=%3Csip:sip.example.com%3E"
    inv = parse_datagram(load("inv2543"))
    assert inv.top_via.branch is None and inv.max_forwards is None
    assert inv.body.startswith(b"v=0") and inv.body.endswith(b"RTP/AVP 0\r\n")
    assert parse_datagram(load("zeromf")).max_forwards == 0


def test_torture_messages_over_a_stream_byte_by_byte() -> None:
    names = [n for n in VALID if n not in ("dblreq", "inv2543")]
    stream = StreamParser()
    got: list[Request | Response] = []
    data = b"\r\n".join(load(n) for n in names)
    for i in range(len(data)):
        stream.feed(data[i : i + 1])
        got.extend(stream.messages())
    assert [m.call_id for m in got] == [parse_datagram(load(n)).call_id for n in names]
    assert stream.buffered == 0
