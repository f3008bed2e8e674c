"""2xx-to-INVITE retransmission (UAS core) and ACK for 2xx (UAC core)."""

from __future__ import annotations

from sip.dialog import build_ack_for_2xx
from sip.message import URI, CSeq, NameAddr, Request, build_response, parse_datagram
from sip.transaction import SendMessage, TimerConfig, TransactionLayer
from sip.useragent import AckTimeout, Invite2xxRetransmitter
from tests.sip.test_transaction import UAC, UAS, make_request, wire


def drive(r: Invite2xxRetransmitter, until: float) -> list[tuple[float, object]]:
    out: list[tuple[float, object]] = []
    while (d := r.next_deadline()) is not None and d <= until:
        out.extend((d, e) for e in r.timers_due(d))
    return out


def ok_response() -> tuple[Request, object]:
    inv = wire(make_request("INVITE"))
    assert isinstance(inv, Request)
    ok = build_response(inv, 200, to_tag="uas-tag")
    ok.headers.add("Contact", NameAddr(URI("sip", user="bob", host="192.0.2.10", port=5070)))
    return inv, ok


def test_2xx_retransmitted_t1_doubling_capped_at_t2_until_64t1() -> None:
    _, ok = ok_response()
    r = Invite2xxRetransmitter(ok, UAC, "UDP", 10.0)  # type: ignore[arg-type]
    fired = drive(r, 100.0)
    sends = [round(t - 10, 2) for t, e in fired if isinstance(e, SendMessage)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, type(e)) for t, e in fired if isinstance(e, AckTimeout)] == [(42.0, AckTimeout)]
    assert r.done and r.next_deadline() is None


def test_2xx_retransmission_stops_on_matching_ack_only() -> None:
    inv, ok = ok_response()
    r = Invite2xxRetransmitter(ok, UAC, "TCP", 0.0, TimerConfig(t1=0.1, t2=0.4))  # type: ignore[arg-type]
    assert [round(t, 2) for t, _ in drive(r, 1.0)] == [0.1, 0.3, 0.7]  # also over TCP
    stranger = wire(make_request("ACK", branch="z9hG4bKx"))
    assert isinstance(stranger, Request)
    assert not r.ack_received(stranger)  # no To tag: not our dialog
    ack = build_ack_for_2xx(inv, wire(ok))  # type: ignore[arg-type]
    assert r.ack_received(wire(ack))  # type: ignore[arg-type]
    assert r.next_deadline() is None and r.timers_due(100.0) == []


def test_uac_ack_for_2xx() -> None:
    inv, ok = ok_response()
    ok.headers.add("Record-Route", NameAddr(URI("sip", host="p1.example.com", params={"lr": None})))  # type: ignore[attr-defined]
    ok.headers.add("Record-Route", NameAddr(URI("sip", host="p2.example.com", params={"lr": None})))  # type: ignore[attr-defined]
    resp = wire(ok)  # type: ignore[arg-type]
    ack = build_ack_for_2xx(inv, resp, branch="z9hG4bKnewack")  # type: ignore[arg-type]
    assert ack.method == "ACK" and ack.uri == URI("sip", user="bob", host="192.0.2.10", port=5070)
    assert ack.top_via.branch == "z9hG4bKnewack" and ack.top_via.host == inv.top_via.host
    assert ack.cseq == CSeq(inv.cseq.seq, "ACK") and ack.to.tag == "uas-tag"
    assert [r.uri.host for r in ack.routes] == ["p2.example.com", "p1.example.com"]
    assert parse_datagram(ack.serialise()) == ack


def test_end_to_end_invite_200_ack_between_two_layers() -> None:
    uac, uas = TransactionLayer(), TransactionLayer()
    inv = make_request("INVITE")
    _ikey, out = uac.send_request(inv, UAS, "UDP", 0.0)
    (up,) = uas.receive(wire(out[0].message), UAC, "UDP", 0.01)  # type: ignore[union-attr]
    assert up.request.method == "INVITE"  # type: ignore[union-attr]
    ok = build_response(up.request, 200, to_tag="t")  # type: ignore[union-attr]
    (sent,) = uas.send_response(ok, 0.02)
    retx = Invite2xxRetransmitter(ok, sent.destination, "UDP", 0.02)  # type: ignore[union-attr]
    (got,) = uac.receive(wire(sent.message), UAS, "UDP", 0.03)  # type: ignore[union-attr]
    ack = build_ack_for_2xx(inv, got.response)  # type: ignore[union-attr]
    (ack_send,) = uac.send_stateless(ack, UAS, "UDP")
    (ack_up,) = uas.receive(wire(ack_send.message), UAC, "UDP", 0.04)  # type: ignore[union-attr]
    assert ack_up.transaction is None  # type: ignore[union-attr]
    assert retx.ack_received(ack_up.request)  # type: ignore[union-attr]
    assert drive(retx, 100.0) == []
