"""RFC 3261 §17 transaction state machines, driven by a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.message import (
    URI,
    CSeq,
    Headers,
    NameAddr,
    Request,
    Response,
    Via,
    build_response,
    parse_datagram,
)
from sip.transaction import (
    Event,
    InvalidTransactionState,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    build_cancel,
)

UAS: tuple[str, int] = ("192.0.2.10", 5060)
UAC: tuple[str, int] = ("192.0.2.20", 5060)


class Clock:
    """Drives a layer: advances time and collects what the timers emit."""

    def __init__(self, layer: TransactionLayer) -> None:
        self.layer = layer
        self.now = 0.0

    def run_until(self, t: float) -> list[tuple[float, Event]]:
        out: list[tuple[float, Event]] = []
        while (d := self.layer.next_deadline()) is not None and d <= t:
            self.now = d
            out.extend((d, e) for e in self.layer.timers_due(d))
        self.now = t
        return out


def make_request(
    method: str,
    branch: str = "z9hG4bKabc123",
    transport: str = "UDP",
    host: str = "192.0.2.20",
    seq: int = 1,
    rport: bool = False,
) -> Request:
    via_params: dict[str, str | None] = {"branch": branch}
    if rport:
        via_params["rport"] = None
    h = Headers()
    h.add("Via", Via(transport, host, 5060, via_params))
    h.add("Max-Forwards", "70")
    h.add("From", NameAddr(URI("sip", user="alice", host="atlanta.example.com"), params={"tag": "ft1"}))
    h.add("To", NameAddr(URI("sip", user="bob", host="biloxi.example.com")))
    h.add("Call-ID", "call-1")
    h.add("CSeq", CSeq(seq, method))
    return Request(method, URI("sip", user="bob", host="biloxi.example.com"), h)


def wire(msg: Request | Response) -> Request | Response:
    """What the peer sees: a fresh parse of the serialised message."""
    return parse_datagram(msg.serialise())


def sends(events: list[Event]) -> list[Request | Response]:
    return [e.message for e in events if isinstance(e, SendMessage)]


def sent_times(events: list[tuple[float, Event]]) -> list[float]:
    return [t for t, e in events if isinstance(e, SendMessage)]


# --- INVITE client (§17.1.1) --------------------------------------------------


def test_invite_client_timer_a_doubles_and_timer_b_times_out() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    key, events = layer.send_request(make_request("INVITE"), UAS, "UDP", 0.0)
    assert [m.method for m in sends(events)] == ["INVITE"]  # type: ignore[union-attr]
    fired = clock.run_until(40.0)
    # Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (doubling, no T2 cap); B at 32.
    assert sent_times(fired) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    timeouts = [e for _, e in fired if isinstance(e, TransactionTimeout)]
    assert len(timeouts) == 1 and timeouts[0].timer == "B" and timeouts[0].transaction == key
    assert layer.get(key) is None and layer.next_deadline() is None


def test_invite_client_provisional_stops_retransmission_and_2xx_goes_up() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv = make_request("INVITE")
    key, _ = layer.send_request(inv, UAS, "UDP", 0.0)
    ringing = build_response(wire(inv), 180, to_tag="tt")  # type: ignore[arg-type]
    events = layer.receive(wire(ringing), UAS, "UDP", 0.2)
    assert [type(e) for e in events] == [ResponseReceived]
    assert layer.get(key).state is State.PROCEEDING  # type: ignore[union-attr]
    assert sent_times(clock.run_until(100.0)) == []  # no A, no B while Proceeding
    ok = build_response(wire(inv), 200, to_tag="tt")  # type: ignore[arg-type]
    events = layer.receive(wire(ok), UAS, "UDP", 100.0)
    assert [type(e) for e in events] == [ResponseReceived]
    assert events[0].transaction == key  # type: ignore[union-attr]
    tx = layer.get(key)
    assert tx is not None and tx.state is State.ACCEPTED
    # A 2xx retransmission in Accepted still reaches the TU (to be re-ACKed).
    again = layer.receive(wire(ok), UAS, "UDP", 101.0)
    assert [type(e) for e in again] == [ResponseReceived]
    clock.run_until(100.0 + 32.0)  # Timer M
    assert layer.get(key) is None
    stray = layer.receive(wire(ok), UAS, "UDP", 140.0)
    assert isinstance(stray[0], ResponseReceived) and stray[0].transaction is None


def test_invite_client_rfc3261_mode_terminates_on_2xx() -> None:
    layer = TransactionLayer(accepted_state=False)
    inv = make_request("INVITE")
    key, _ = layer.send_request(inv, UAS, "UDP", 0.0)
    layer.receive(wire(build_response(wire(inv), 200, to_tag="x")), UAS, "UDP", 1.0)  # type: ignore[arg-type]
    assert layer.get(key) is None


def test_invite_client_non2xx_generates_ack_and_timer_d() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv = make_request("INVITE")
    inv.headers.add("Route", NameAddr(URI("sip", host="proxy.example.com", params={"lr": None})))
    key, _ = layer.send_request(inv, UAS, "UDP", 0.0)
    busy = wire(build_response(wire(inv), 486, to_tag="busytag"))  # type: ignore[arg-type]
    events = layer.receive(busy, UAS, "UDP", 0.1)
    ack = sends(events)[0]
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert [type(e) for e in events] == [SendMessage, ResponseReceived]
    # §17.1.1.3: same Request-URI, top Via (branch), From, Call-ID, CSeq number,
    # Route; To from the response.
    assert ack.uri == inv.uri and ack.vias == [inv.top_via]
    assert ack.cseq == CSeq(1, "ACK") and ack.to.tag == "busytag" and ack.from_.tag == "ft1"
    assert [str(r) for r in ack.routes] == ["<sip:proxy.example.com;lr>"]
    assert layer.get(key).state is State.COMPLETED  # type: ignore[union-attr]
    # Retransmitted final responses are absorbed and re-ACKed, not passed up.
    events = layer.receive(busy, UAS, "UDP", 5.0)
    assert [type(e) for e in events] == [SendMessage] and sends(events)[0] is ack
    clock.run_until(32.09)
    assert layer.get(key) is not None
    clock.run_until(32.1)  # Timer D = 32 s
    assert layer.get(key) is None


def test_invite_client_reliable_no_retransmit_and_zero_timer_d() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv = make_request("INVITE", transport="TCP")
    key, _ = layer.send_request(inv, UAS, "TCP", 0.0)
    assert sent_times(clock.run_until(10.0)) == []
    events = layer.receive(wire(build_response(wire(inv), 404, to_tag="n")), UAS, "TCP", 10.0)  # type: ignore[arg-type]
    assert [m.method for m in sends(events)] == ["ACK"]  # type: ignore[union-attr]
    assert layer.get(key) is None  # Timer D is zero on reliable transports


def test_invite_client_timer_b_on_reliable_transport() -> None:
    layer = TransactionLayer(TimerConfig(t1=0.1))
    clock = Clock(layer)
    _key, _ = layer.send_request(make_request("INVITE", transport="TCP"), UAS, "TCP", 0.0)
    fired = clock.run_until(6.41)
    assert [(round(t, 2), e.timer) for t, e in fired if isinstance(e, TransactionTimeout)] == [(6.4, "B")]


# --- non-INVITE client (§17.1.2) -----------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    key, _ = layer.send_request(make_request("OPTIONS"), UAS, "UDP", 0.0)
    fired = clock.run_until(40.0)
    # E: 0.5, 1.5, 3.5, then every T2=4 s: 7.5, 11.5, ... 31.5; F at 32.
    assert sent_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [e.timer for _, e in fired if isinstance(e, TransactionTimeout)] == ["F"]
    assert layer.get(key) is None


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    req = make_request("BYE")
    _key, _ = layer.send_request(req, UAS, "UDP", 0.0)
    clock.run_until(0.6)  # one retransmission at 0.5; next E due at 1.5
    layer.receive(wire(build_response(wire(req), 100)), UAS, "UDP", 0.6)  # type: ignore[arg-type]
    fired = clock.run_until(14.0)
    assert sent_times(fired) == [1.5, 5.5, 9.5, 13.5]


def test_non_invite_client_final_response_timer_k() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    req = make_request("BYE")
    key, _ = layer.send_request(req, UAS, "UDP", 0.0)
    ok = wire(build_response(wire(req), 200))  # type: ignore[arg-type]
    assert [type(e) for e in layer.receive(ok, UAS, "UDP", 0.1)] == [ResponseReceived]
    assert layer.get(key).state is State.COMPLETED  # type: ignore[union-attr]
    assert layer.receive(ok, UAS, "UDP", 1.0) == []  # retransmission absorbed
    assert sent_times(clock.run_until(5.0)) == []
    assert layer.get(key) is not None
    clock.run_until(5.1)  # K = T4
    assert layer.get(key) is None


def test_non_invite_client_reliable() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    req = make_request("MESSAGE", transport="TLS")
    key, _ = layer.send_request(req, UAS, "TLS", 0.0)
    assert sent_times(clock.run_until(31.0)) == []
    layer.receive(wire(build_response(wire(req), 202)), UAS, "TLS", 31.0)  # type: ignore[arg-type]
    assert layer.get(key) is None  # K is zero


def test_configurable_timers() -> None:
    layer = TransactionLayer(TimerConfig(t1=0.1, t2=0.3, t4=1.0))
    clock = Clock(layer)
    layer.send_request(make_request("OPTIONS"), UAS, "UDP", 0.0)
    fired = clock.run_until(7.0)
    assert [round(t, 2) for t in sent_times(fired)][:5] == [0.1, 0.3, 0.6, 0.9, 1.2]
    assert [round(t, 2) for t, e in fired if isinstance(e, TransactionTimeout)] == [6.4]


def test_send_request_validations() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError):
        layer.send_request(make_request("ACK"), UAS, "UDP", 0.0)
    with pytest.raises(ValueError):
        layer.send_request(make_request("OPTIONS", branch="nocookie"), UAS, "UDP", 0.0)
    layer.send_request(make_request("OPTIONS"), UAS, "UDP", 0.0)
    with pytest.raises(ValueError):
        layer.send_request(make_request("OPTIONS"), UAS, "UDP", 0.0)


def test_transport_error_terminates_client_transaction() -> None:
    layer = TransactionLayer()
    key, _ = layer.send_request(make_request("INVITE", transport="TCP"), UAS, "TCP", 0.0)
    events = layer.transport_error(key, 0.1)
    assert len(events) == 1 and isinstance(events[0], TransportError)
    assert layer.get(key) is None and layer.transport_error(key, 0.2) == []


def test_response_matching_uses_branch_and_method() -> None:
    layer = TransactionLayer()
    inv = make_request("INVITE")
    key, _ = layer.send_request(inv, UAS, "UDP", 0.0)
    other_branch = wire(build_response(wire(make_request("INVITE", branch="z9hG4bKother")), 180))  # type: ignore[arg-type]
    assert layer.receive(other_branch, UAS, "UDP", 0.1)[0].transaction is None  # type: ignore[union-attr]
    wrong_method = build_response(wire(inv), 200)  # type: ignore[arg-type]
    wrong_method.headers.set("CSeq", CSeq(1, "CANCEL"))
    assert layer.receive(wire(wrong_method), UAS, "UDP", 0.1)[0].transaction is None  # type: ignore[union-attr]
    assert layer.get(key).state is State.CALLING  # type: ignore[union-attr]


# --- INVITE server (§17.2.1) ----------------------------------------------------


def recv_invite(
    layer: TransactionLayer, now: float = 0.0, transport: str = "UDP", **kw: object
) -> tuple[Request, list[Event]]:
    inv = wire(make_request("INVITE", transport=transport, **kw))  # type: ignore[arg-type]
    assert isinstance(inv, Request)
    return inv, layer.receive(inv, UAC, transport, now)


def test_invite_server_sends_100_trying_after_200ms_unless_tu_answers() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    _inv, events = recv_invite(layer)
    assert [type(e) for e in events] == [RequestReceived]
    fired = clock.run_until(1.0)
    assert [(t, m.status) for t, e in fired if isinstance(e, SendMessage) for m in [e.message]] == [(0.2, 100)]  # type: ignore[union-attr]

    layer2 = TransactionLayer()
    inv2, _ = recv_invite(layer2)
    layer2.send_response(build_response(inv2, 180, to_tag="a"), 0.1)
    assert Clock(layer2).run_until(1.0) == []


def test_invite_server_immediate_or_no_trying() -> None:
    layer = TransactionLayer(TimerConfig(trying_delay=0))
    _, events = recv_invite(layer)
    assert [m.status for m in sends(events)] == [100]  # type: ignore[union-attr]
    trying = sends(events)[0]
    assert isinstance(trying, Response) and trying.to.tag is None
    quiet = TransactionLayer(TimerConfig(trying_delay=None))
    recv_invite(quiet)
    assert Clock(quiet).run_until(10.0) == []


def test_invite_server_absorbs_retransmissions_and_replays_last_response() -> None:
    layer = TransactionLayer()
    inv, events = recv_invite(layer)
    key = events[0].transaction  # type: ignore[union-attr]
    again = layer.receive(wire(inv), UAC, "UDP", 0.1)  # type: ignore[arg-type]
    # Retransmission before any provisional: answered with 100 Trying at once.
    assert [m.status for m in sends(again)] == [100]  # type: ignore[union-attr]
    ringing = build_response(inv, 180, to_tag="uas")
    layer.send_response(ringing, 0.3)
    again = layer.receive(wire(inv), UAC, "UDP", 0.6)  # type: ignore[arg-type]
    assert sends(again) == [ringing]
    assert not any(isinstance(e, RequestReceived) for e in again)
    busy = build_response(inv, 486, to_tag="uas")
    layer.send_response(busy, 1.0, transaction=key)
    again = layer.receive(wire(inv), UAC, "UDP", 1.2)  # type: ignore[arg-type]
    assert sends(again) == [busy]


def test_invite_server_timer_g_and_h() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv, events = recv_invite(layer)
    key = events[0].transaction  # type: ignore[union-attr]
    layer.send_response(build_response(inv, 180, to_tag="u"), 0.0)
    layer.send_response(build_response(inv, 603, to_tag="u"), 10.0)
    fired = clock.run_until(50.0)
    # G: T1 doubling capped at T2 from 10.0; H at 10 + 32 s.
    assert [round(t - 10, 2) for t in sent_times(fired)] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    timeouts = [(t, e) for t, e in fired if isinstance(e, TransactionTimeout)]
    assert [(t, e.timer) for t, e in timeouts] == [(42.0, "H")]
    assert timeouts[0][1].transaction == key and layer.get(key) is None


def test_invite_server_ack_confirms_then_timer_i() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv, events = recv_invite(layer)
    key = events[0].transaction  # type: ignore[union-attr]
    busy = build_response(inv, 486, to_tag="u")
    layer.send_response(busy, 0.0)
    ack = wire(make_request("ACK"))  # same branch as the INVITE: §17.1.1.3
    ack.headers.set("To", NameAddr(URI("sip", user="bob", host="biloxi.example.com"), params={"tag": "u"}))
    assert layer.receive(ack, UAC, "UDP", 0.7) == []  # absorbed by the transaction
    tx = layer.get(key)
    assert tx is not None and tx.state is State.CONFIRMED
    assert layer.receive(ack, UAC, "UDP", 1.0) == []  # ACK retransmission absorbed
    assert sent_times(clock.run_until(5.6)) == []  # G stopped
    assert layer.get(key) is not None
    clock.run_until(5.8)  # I = T4 after the ACK
    assert layer.get(key) is None


def test_invite_server_reliable_no_g_and_zero_i() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv, events = recv_invite(layer, transport="TCP")
    key = events[0].transaction  # type: ignore[union-attr]
    (send,) = layer.send_response(build_response(inv, 486, to_tag="u"), 0.0)
    assert isinstance(send, SendMessage) and send.destination == UAC  # same connection
    assert sent_times(clock.run_until(20.0)) == []
    ack = wire(make_request("ACK", transport="TCP"))
    layer.receive(ack, UAC, "TCP", 20.0)
    assert layer.get(key) is None


def test_invite_server_2xx_accepted_state_absorbs_invite_and_passes_ack() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    inv, events = recv_invite(layer)
    key = events[0].transaction  # type: ignore[union-attr]
    ok = build_response(inv, 200, to_tag="u")
    assert sends(layer.send_response(ok, 1.0)) == [ok]
    assert layer.get(key).state is State.ACCEPTED  # type: ignore[union-attr]
    # INVITE retransmission must not look like a new call, nor replay the 2xx
    # (retransmitting 2xx is the TU's job).
    assert layer.receive(wire(inv), UAC, "UDP", 1.5) == []  # type: ignore[arg-type]
    # The TU's 2xx retransmission passes through the transaction.
    assert sends(layer.send_response(ok, 1.5)) == [ok]
    # The ACK for a 2xx has its own branch: it goes to the TU.
    ack = wire(make_request("ACK", branch="z9hG4bKack2xx"))
    (up,) = layer.receive(ack, UAC, "UDP", 2.0)
    assert isinstance(up, RequestReceived) and up.transaction is None
    clock.run_until(1.0 + 32.0)  # Timer L
    assert layer.get(key) is None


def test_invite_server_rfc3261_mode_terminates_on_2xx() -> None:
    layer = TransactionLayer(accepted_state=False)
    inv, events = recv_invite(layer)
    key = events[0].transaction  # type: ignore[union-attr]
    layer.send_response(build_response(inv, 200, to_tag="u"), 1.0)
    assert layer.get(key) is None
    # Without Accepted, a retransmitted INVITE reaches the TU again: it must
    # recognise it (same branch) - the reason RFC 6026 exists.
    again = layer.receive(wire(inv), UAC, "UDP", 1.5)  # type: ignore[arg-type]
    assert isinstance(again[0], RequestReceived)


def test_invite_server_response_state_errors() -> None:
    layer = TransactionLayer()
    inv, _ = recv_invite(layer)
    layer.send_response(build_response(inv, 486, to_tag="u"), 0.0)
    with pytest.raises(InvalidTransactionState):
        layer.send_response(build_response(inv, 200, to_tag="u"), 0.1)
    with pytest.raises(LookupError):
        layer.send_response(build_response(wire(make_request("INVITE", branch="z9hG4bKnone")), 200), 0.1)  # type: ignore[arg-type]


# --- non-INVITE server (§17.2.2) -------------------------------------------------


def test_non_invite_server_trying_absorbs_then_replays_and_timer_j() -> None:
    layer = TransactionLayer()
    clock = Clock(layer)
    bye = wire(make_request("BYE"))
    events = layer.receive(bye, UAC, "UDP", 0.0)
    assert [type(e) for e in events] == [RequestReceived]
    key = events[0].transaction  # type: ignore[union-attr]
    assert layer.receive(bye, UAC, "UDP", 0.5) == []  # Trying absorbs silently
    prov = build_response(bye, 100)  # type: ignore[arg-type]
    layer.send_response(prov, 0.6)
    assert sends(layer.receive(bye, UAC, "UDP", 1.0)) == [prov]
    ok = build_response(bye, 200)  # type: ignore[arg-type]
    layer.send_response(ok, 1.5)
    assert sends(layer.receive(bye, UAC, "UDP", 2.0)) == [ok]
    assert layer.get(key).state is State.COMPLETED  # type: ignore[union-attr]
    clock.run_until(1.5 + 31.9)
    assert layer.get(key) is not None
    clock.run_until(1.5 + 32.0)  # J = 64*T1
    assert layer.get(key) is None
    # After J, the same request is a new transaction again.
    assert isinstance(layer.receive(bye, UAC, "UDP", 40.0)[0], RequestReceived)


def test_non_invite_server_reliable_terminates_on_final() -> None:
    layer = TransactionLayer()
    bye = wire(make_request("BYE", transport="TCP"))
    key = layer.receive(bye, UAC, "TCP", 0.0)[0].transaction  # type: ignore[union-attr]
    layer.send_response(build_response(bye, 200), 0.1)  # type: ignore[arg-type]
    assert layer.get(key) is None
    with pytest.raises(LookupError):
        layer.send_response(build_response(bye, 200), 0.2)  # type: ignore[arg-type]


def test_server_matching_uses_sent_by_and_method() -> None:
    layer = TransactionLayer()
    a = layer.receive(wire(make_request("OPTIONS")), UAC, "UDP", 0.0)
    # Same branch from another sent-by is another transaction (§17.2.3).
    b = layer.receive(wire(make_request("OPTIONS", host="192.0.2.99")), ("192.0.2.99", 5060), "UDP", 0.0)
    assert isinstance(a[0], RequestReceived) and isinstance(b[0], RequestReceived)
    assert a[0].transaction != b[0].transaction and len(layer) == 2


def test_response_destination_uses_received_and_rport() -> None:
    layer = TransactionLayer()
    req = wire(make_request("OPTIONS", rport=True, host="10.0.0.5"))
    events = layer.receive(req, ("203.0.113.7", 40001), "UDP", 0.0)
    received = events[0].request  # type: ignore[union-attr]
    assert received.top_via.received == "203.0.113.7" and received.top_via.rport == 40001
    (send,) = layer.send_response(build_response(received, 200), 0.1)
    assert isinstance(send, SendMessage) and send.destination == ("203.0.113.7", 40001)
    assert b";rport=40001" in send.data and b";received=203.0.113.7" in send.data
    # Without rport: received host, Via port.
    req2 = wire(make_request("OPTIONS", branch="z9hG4bKn2", host="10.0.0.5"))
    r2 = layer.receive(req2, ("203.0.113.7", 40001), "UDP", 0.0)[0].request  # type: ignore[union-attr]
    (send2,) = layer.send_response(build_response(r2, 200), 0.1)
    assert isinstance(send2, SendMessage) and send2.destination == ("203.0.113.7", 5060)


# --- CANCEL (§9) -------------------------------------------------------------------


def test_cancel_before_final_response() -> None:
    layer = TransactionLayer()
    inv, events = recv_invite(layer)
    invite_key = events[0].transaction  # type: ignore[union-attr]
    layer.send_response(build_response(inv, 180, to_tag="u"), 0.1)
    cancel = wire(build_cancel(inv))
    (up,) = layer.receive(cancel, UAC, "UDP", 1.0)
    assert isinstance(up, RequestReceived) and up.request.method == "CANCEL"
    assert up.cancels == invite_key and up.transaction != invite_key
    # TU: 200 to the CANCEL (its own transaction), 487 to the INVITE.
    layer.send_response(build_response(cancel, 200, to_tag="u"), 1.0)  # type: ignore[arg-type]
    layer.send_response(build_response(inv, 487, to_tag="u"), 1.0)
    assert layer.get(invite_key).state is State.COMPLETED  # type: ignore[union-attr]
    # A retransmitted CANCEL gets the 200 again, not a second RequestReceived.
    (again,) = layer.receive(cancel, UAC, "UDP", 1.5)
    assert isinstance(again, SendMessage) and again.message.status == 200  # type: ignore[union-attr]


def test_cancel_after_final_response_and_without_invite() -> None:
    layer = TransactionLayer()
    inv, events = recv_invite(layer)
    invite_key = events[0].transaction  # type: ignore[union-attr]
    layer.send_response(build_response(inv, 200, to_tag="u"), 0.1)
    (up,) = layer.receive(wire(build_cancel(inv)), UAC, "UDP", 0.2)
    # The INVITE transaction still exists (Accepted): the TU answers 200 to
    # the CANCEL and leaves the call alone (§9.2).
    assert isinstance(up, RequestReceived) and up.cancels == invite_key
    assert layer.get(invite_key).state is State.ACCEPTED  # type: ignore[union-attr]
    orphan = wire(build_cancel(wire(make_request("INVITE", branch="z9hG4bKgone"))))  # type: ignore[arg-type]
    (up2,) = layer.receive(orphan, UAC, "UDP", 0.3)
    assert isinstance(up2, RequestReceived) and up2.cancels is None  # TU answers 481


def test_uac_cancel_race_with_200() -> None:
    layer = TransactionLayer()
    inv = make_request("INVITE")
    ikey, _ = layer.send_request(inv, UAS, "UDP", 0.0)
    layer.receive(wire(build_response(wire(inv), 180, to_tag="u")), UAS, "UDP", 0.1)  # type: ignore[arg-type]
    cancel = build_cancel(inv)
    assert cancel.top_via.branch == inv.top_via.branch and cancel.cseq == CSeq(1, "CANCEL")
    ckey, events = layer.send_request(cancel, UAS, "UDP", 0.2)
    assert ckey != ikey and [m.method for m in sends(events)] == ["CANCEL"]  # type: ignore[union-attr]
    # The 200 to the INVITE crosses the CANCEL: both transactions resolve.
    ok = layer.receive(wire(build_response(wire(inv), 200, to_tag="u")), UAS, "UDP", 0.25)  # type: ignore[arg-type]
    assert ok[0].transaction == ikey and ok[0].response.status == 200  # type: ignore[union-attr]
    c200 = layer.receive(wire(build_response(wire(cancel), 200, to_tag="u")), UAS, "UDP", 0.3)  # type: ignore[arg-type]
    assert c200[0].transaction == ckey  # type: ignore[union-attr]
    assert layer.get(ikey).state is State.ACCEPTED  # type: ignore[union-attr]


# --- RFC 2543 peers ---------------------------------------------------------------


def test_rfc2543_request_without_magic_cookie() -> None:
    layer = TransactionLayer()
    data = (Path(__file__).parent / "torture" / "inv2543.dat").read_bytes()
    inv = parse_datagram(data)
    assert isinstance(inv, Request) and inv.top_via.branch is None
    events = layer.receive(inv, UAC, "UDP", 0.0)
    key = events[0].transaction  # type: ignore[union-attr]
    assert key is not None and key.legacy is not None
    assert layer.receive(parse_datagram(data), UAC, "UDP", 0.3) != []  # retransmission: 100 Trying
    busy = build_response(inv, 486, to_tag="t2543")
    with pytest.raises(LookupError):
        layer.send_response(busy, 0.4)  # no branch: the TU names the transaction
    layer.send_response(busy, 0.4, transaction=key)
    ack_text = (
        data.split(b"\r\n\r\n")[0].replace(b"INVITE sip:UserB", b"ACK sip:UserB").replace(b"56 INVITE", b"56 ACK")
    )
    ack_text = ack_text.replace(
        b"To: sip:+16505552222@ss1.example.net;user=phone", b"To: sip:+16505552222@ss1.example.net;user=phone;tag=t2543"
    )
    ack = parse_datagram(ack_text + b"\r\nContent-Length: 0\r\n\r\n")
    assert layer.receive(ack, UAC, "UDP", 0.5) == []
    assert layer.get(key).state is State.CONFIRMED  # type: ignore[union-attr]


def test_magic_cookie_alone_is_not_an_rfc3261_branch() -> None:
    layer = TransactionLayer()
    req = wire(make_request("OPTIONS", branch="z9hG4bK"))
    key = layer.receive(req, UAC, "UDP", 0.0)[0].transaction  # type: ignore[union-attr]
    assert key is not None and key.legacy is not None
