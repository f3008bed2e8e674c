"""Dialog state (RFC 3261 §12), in-dialog requests, CSeq order and glare (§14)."""

from __future__ import annotations

import pytest

from sip.dialog import Dialog, DialogError, DialogId, DialogState, DialogTable
from sip.message import URI, NameAddr, Request, Response, Via, build_response, parse_datagram
from sip.transaction import TransactionLayer
from tests.sip.test_transaction import UAC, UAS, make_request, wire

BOB_CONTACT = NameAddr(URI("sip", user="bob", host="192.0.2.10", port=5070))
ALICE_CONTACT = NameAddr(URI("sip", user="alice", host="192.0.2.20", port=5060))


def rr(host: str, lr: bool = True) -> NameAddr:
    return NameAddr(URI("sip", host=host, params={"lr": None} if lr else {}))


def invite_with_contact(record_routes: list[NameAddr] = ()) -> Request:  # type: ignore[assignment]
    inv = make_request("INVITE")
    inv.headers.add("Contact", ALICE_CONTACT)
    for r in record_routes:
        inv.headers.add("Record-Route", r)
    got = wire(inv)
    assert isinstance(got, Request)
    return got


def answer(inv: Request, status: int, tag: str = "bobtag") -> Response:
    resp = build_response(inv, status, to_tag=tag)
    for r in inv.record_routes:
        resp.headers.add("Record-Route", r)
    resp.headers.add("Contact", BOB_CONTACT)
    got = wire(resp)
    assert isinstance(got, Response)
    return got


def pair(record_routes: list[NameAddr] = ()) -> tuple[Dialog, Dialog, Request]:  # type: ignore[assignment]
    inv = invite_with_contact(record_routes)
    ok = answer(inv, 200)
    return Dialog.uac(inv, ok), Dialog.uas(inv, ok, BOB_CONTACT), inv


def test_uac_and_uas_state_mirror_each_other() -> None:
    uac, uas, _inv = pair([rr("p1.example.com"), rr("p2.example.com")])
    assert uac.id == DialogId("call-1", "ft1", "bobtag")
    assert uas.id == DialogId("call-1", "bobtag", "ft1")
    assert uac.state is uas.state is DialogState.CONFIRMED
    assert uac.remote_target == BOB_CONTACT.uri and uas.remote_target == ALICE_CONTACT.uri
    assert [r.uri.host for r in uac.route_set] == ["p2.example.com", "p1.example.com"]
    assert [r.uri.host for r in uas.route_set] == ["p1.example.com", "p2.example.com"]
    assert uac.local_seq == 1 and uac.remote_seq is None
    assert uas.remote_seq == 1 and uas.local_seq is None
    assert uac.is_uac and not uas.is_uac


def test_bye_from_uac_is_accepted_by_uas_and_terminates_both() -> None:
    uac, uas, _ = pair([rr("p1.example.com")])
    bye = uac.create_request("BYE", via=Via("UDP", "192.0.2.20", 5060, {"branch": "z9hG4bKbye"}))
    assert bye.cseq.seq == 2 and bye.method == "BYE"
    assert bye.uri == BOB_CONTACT.uri
    assert [r.uri.host for r in bye.routes] == ["p1.example.com"]
    assert bye.from_.tag == "ft1" and bye.to.tag == "bobtag" and bye.call_id == "call-1"
    assert "Contact" not in bye.headers
    got = parse_datagram(bye.serialise())
    assert isinstance(got, Request)
    table = DialogTable()
    table.add(uas)
    dialog, rejection = table.match(got)
    assert dialog is uas and rejection is None
    assert uas.state is DialogState.TERMINATED and len(table) == 0
    uac.receive_response(got, build_response(got, 200))
    assert uac.state is DialogState.TERMINATED
    with pytest.raises(DialogError):
        uac.create_request("BYE")


def test_uas_first_request_starts_local_cseq_and_swaps_from_to() -> None:
    _, uas, _ = pair()
    bye = uas.create_request("BYE")
    assert bye.cseq.seq == 1 and uas.local_seq == 1
    assert bye.from_.tag == "bobtag" and bye.from_.uri.user == "bob"
    assert bye.to.tag == "ft1" and bye.to.uri.user == "alice"
    assert bye.uri == ALICE_CONTACT.uri and "Via" not in bye.headers
    assert uas.create_request("INFO").cseq.seq == 2


def test_unknown_dialog_is_481_and_stray_ack_is_dropped() -> None:
    table = DialogTable()
    bye = make_request("BYE", seq=5)
    assert table.match(bye) == (None, None)  # no To tag: not in-dialog
    bye.to.tag = "nosuch"
    dialog, rejection = table.match(bye)
    assert dialog is None and rejection is not None and rejection.status == 481
    ack = make_request("ACK")
    ack.to.tag = "nosuch"
    assert table.match(ack) == (None, None)


def test_lower_cseq_is_rejected_with_500_and_ack_cancel_are_exempt() -> None:
    uac, uas, inv = pair()
    info = uac.create_request("INFO")
    info.headers.add("Via", Via("UDP", "192.0.2.20", 5060, {"branch": "z9hG4bKi"}))
    assert uas.receive_request(info) is None and uas.remote_seq == 2
    old = uac.create_request("INFO")
    old.headers.set("CSeq", "1 INFO")
    old.headers.add("Via", Via("UDP", "192.0.2.20", 5060, {"branch": "z9hG4bKo"}))
    rejection = uas.receive_request(old)
    assert rejection is not None and rejection.status == 500 and rejection.to.tag == "bobtag"
    assert uas.remote_seq == 2
    ack = uac.create_ack(inv, via=Via("UDP", "192.0.2.20", 5060, {"branch": "z9hG4bKa"}))
    assert ack.cseq.seq == 1 and ack.cseq.method == "ACK"
    assert uas.receive_request(ack) is None


def test_reinvite_refreshes_target_both_ways() -> None:
    uac, uas, _ = pair()
    uac.local_contact = NameAddr(URI("sip", user="alice", host="198.51.100.7"))
    reinv = uac.create_request(
        "INVITE",
        body=b"v=0\r\n",
        content_type="application/sdp",
        via=Via("UDP", "192.0.2.20", 5060, {"branch": "z9hG4bKr"}),
    )
    assert reinv.contacts[0].uri.host == "198.51.100.7"
    assert reinv.content_type == "application/sdp" and reinv.body == b"v=0\r\n"
    assert uas.receive_request(reinv) is None
    assert uas.remote_target.host == "198.51.100.7" and uas.server_invite == 2
    ok = build_response(reinv, 200)
    ok.headers.add("Contact", NameAddr(URI("sip", user="bob", host="203.0.113.9")))
    uas.response_sent(reinv, ok)
    assert uas.server_invite is None
    uac.receive_response(reinv, ok)
    assert uac.remote_target.host == "203.0.113.9" and uac.client_invite is None


def test_overlapping_reinvite_glare_491_and_pending_500() -> None:
    uac, uas, _ = pair()
    ours = uas.create_request("INVITE")  # UAS re-INVITEs ...
    theirs = uac.create_request("INVITE", via=Via("UDP", "h", 5060, {"branch": "z9hG4bKg"}))
    rejection = uas.receive_request(theirs)  # ... while the UAC does too
    assert rejection is not None and rejection.status == 491
    with pytest.raises(DialogError):
        uas.create_request("INVITE")  # ours still in progress
    uas.receive_response(ours, build_response(ours, 200))
    assert uas.client_invite is None
    uac.receive_response(theirs, rejection)
    assert uac.client_invite is None and uac.state is DialogState.CONFIRMED
    # A second re-INVITE before we answered the first: 500 with Retry-After.
    first = uac.create_request("INVITE", via=Via("UDP", "h", 5060, {"branch": "z9hG4bK1"}))
    uac.client_invite = None  # a misbehaving peer that does not wait
    second = uac.create_request("INVITE", via=Via("UDP", "h", 5060, {"branch": "z9hG4bK2"}))
    assert uas.receive_request(first) is None
    rejection = uas.receive_request(second)
    assert rejection is not None and rejection.status == 500
    assert 0 <= int(str(rejection.headers.get("Retry-After"))) <= 10


def test_early_dialog_confirmed_by_2xx_with_recomputed_route_set() -> None:
    inv = invite_with_contact()
    ringing = build_response(inv, 180, to_tag="bobtag")
    ringing.headers.add("Record-Route", rr("early.example.com"))
    ringing.headers.add("Contact", NameAddr(URI("sip", host="192.0.2.99")))
    uac = Dialog.uac(inv, wire(ringing))  # type: ignore[arg-type]
    assert uac.state is DialogState.EARLY and uac.remote_target.host == "192.0.2.99"
    with pytest.raises(DialogError):
        uac.create_request("INVITE")  # the initial INVITE is still pending
    ok = answer(inv, 200)
    ok.headers.add("Record-Route", rr("final.example.com"))
    uac.receive_response(inv, ok)
    assert uac.state is DialogState.CONFIRMED
    assert [r.uri.host for r in uac.route_set] == ["final.example.com"]
    assert uac.remote_target == BOB_CONTACT.uri


def test_early_dialog_terminated_by_error_and_uas_side_by_final() -> None:
    inv = invite_with_contact()
    ringing = answer(inv, 180)
    uac = Dialog.uac(inv, ringing)
    uac.receive_response(inv, answer(inv, 486))
    assert uac.state is DialogState.TERMINATED
    uas = Dialog.uas(inv, ringing)
    assert uas.state is DialogState.EARLY and uas.server_invite == 1
    uas.response_sent(inv, answer(inv, 200))
    assert uas.state is DialogState.CONFIRMED and uas.server_invite is None
    uas2 = Dialog.uas(inv, ringing)
    uas2.response_sent(inv, answer(inv, 487))
    assert uas2.state is DialogState.TERMINATED


def test_481_or_408_to_in_dialog_request_terminates() -> None:
    uac, _, _ = pair()
    info = uac.create_request("INFO")
    uac.receive_response(info, build_response(info, 481))
    assert uac.state is DialogState.TERMINATED


def test_dialog_needs_tagged_1xx_or_2xx() -> None:
    inv = invite_with_contact()
    with pytest.raises(DialogError):
        Dialog.uac(inv, wire(build_response(inv, 180)))  # type: ignore[arg-type]
    with pytest.raises(DialogError):
        Dialog.uas(inv, answer(inv, 100))


def test_strict_route_rewrites_request_uri() -> None:
    uac, _, _ = pair([rr("loose.example.com"), rr("strict.example.com", lr=False)])
    # UAC route set is reversed: the strict router comes first.
    bye = uac.create_request("BYE")
    assert bye.uri.host == "strict.example.com"
    assert [r.uri for r in bye.routes] == [rr("loose.example.com").uri, BOB_CONTACT.uri]


def test_create_ack_and_cancel_through_create_request_are_refused() -> None:
    uac, _, _ = pair()
    for method in ("ACK", "CANCEL"):
        with pytest.raises(DialogError):
            uac.create_request(method)


def test_in_dialog_bye_over_two_transaction_layers() -> None:
    """BYE built by the UAC dialog goes through both transaction layers."""
    uac, uas, _ = pair()
    table = DialogTable()
    table.add(uas)
    uac_layer, uas_layer = TransactionLayer(), TransactionLayer()
    bye = uac.create_request("BYE", via=Via("UDP", UAC[0], UAC[1], {"branch": "z9hG4bKbye2"}))
    _key, out = uac_layer.send_request(bye, UAS, "UDP", 0.0)
    (up,) = uas_layer.receive(wire(out[0].message), UAC, "UDP", 0.01)  # type: ignore[union-attr]
    dialog, rejection = table.match(up.request)  # type: ignore[union-attr]
    assert dialog is uas and rejection is None
    (sent,) = uas_layer.send_response(build_response(up.request, 200), 0.02)  # type: ignore[union-attr]
    (got,) = uac_layer.receive(wire(sent.message), UAS, "UDP", 0.03)  # type: ignore[union-attr]
    uac.receive_response(bye, got.response)  # type: ignore[union-attr]
    assert uac.state is uas.state is DialogState.TERMINATED
