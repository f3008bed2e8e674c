"""The user-agent core without sockets: bytes in, events and bytes out, a fake clock."""

from __future__ import annotations

import pytest

from sip.dialog import build_ack_for_2xx
from sip.message import URI, NameAddr, Request, Response, build_response, parse_datagram
from sip.transaction import (
    InvalidTransactionState,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TimerConfig,
    TransactionKey,
    TransactionTimeout,
    build_cancel,
)
from sip.useragent import AckTimeout, InviteCancelled, StrayResponse, UAEvent, UserAgentCore
from tests.sip.test_transaction import UAC, UAS, make_request

T1, T2 = 0.5, 4.0


def arrive(
    core: UserAgentCore, data: bytes, source: tuple[str, int], now: float, transport: str = "UDP"
) -> list[UAEvent]:
    return core.receive(parse_datagram(data), source, transport, now)


def sent(events: list[UAEvent]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SendMessage)]


def for_tu(events: list[UAEvent]) -> list[UAEvent]:
    return [e for e in events if not isinstance(e, SendMessage)]


def run_until(core: UserAgentCore, until: float) -> list[tuple[float, UAEvent]]:
    out: list[tuple[float, UAEvent]] = []
    while (deadline := core.next_deadline()) is not None and deadline <= until:
        out.extend((deadline, e) for e in core.timers_due(deadline))
    return out


def status_of(data: bytes) -> int:
    message = parse_datagram(data)
    assert isinstance(message, Response)
    return message.status


def incoming_invite(core: UserAgentCore, transport: str = "UDP") -> RequestReceived:
    invite = make_request("INVITE", transport=transport)
    (event,) = for_tu(arrive(core, invite.serialise(), UAC, 0.0, transport))
    assert isinstance(event, RequestReceived) and event.transaction is not None
    return event


def answer(core: UserAgentCore, invite: RequestReceived, now: float) -> Response:
    ok = build_response(invite.request, 200, to_tag="uas-tag")
    ok.headers.add("Contact", NameAddr(URI("sip", user="bob", host=UAS[0], port=UAS[1])))
    assert [status_of(d) for d in sent(core.send_response(ok, now, invite.transaction))] == [200]
    return ok


# --- 2xx retransmission (§13.3.1.4) -------------------------------------------------


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_2xx_retransmitted_at_t1_doubling_to_t2_then_ack_timeout_at_64_t1(transport: str) -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite = incoming_invite(core, transport)
    ok = answer(core, invite, 10.0)
    assert core.unacknowledged == 1
    fired = run_until(core, 100.0)
    retransmissions = [(round(t - 10, 2), e.data) for t, e in fired if isinstance(e, SendMessage)]
    assert [t for t, _ in retransmissions] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert {data for _, data in retransmissions} == {ok.serialise()}
    timeouts = [(round(t - 10, 2), e) for t, e in fired if isinstance(e, AckTimeout)]
    assert timeouts == [(64 * T1, AckTimeout(ok))]
    assert core.unacknowledged == 0


def test_2xx_retransmission_stops_on_its_ack_which_goes_to_the_tu() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite = incoming_invite(core)
    ok = answer(core, invite, 0.0)
    assert len(run_until(core, 1.6)) == 2  # at 0.5 and 1.5
    assert core.next_deadline() == 3.5

    other = build_ack_for_2xx(invite.request, ok)
    other.headers.set("To", NameAddr(ok.to.uri, params={"tag": "another-tag"}))
    assert for_tu(arrive(core, other.serialise(), UAC, 2.0)) != []  # not ours: still retransmitting
    assert core.unacknowledged == 1

    ack = build_ack_for_2xx(invite.request, ok)
    events = arrive(core, ack.serialise(), UAC, 2.0)
    assert sent(events) == []
    (up,) = events
    assert isinstance(up, RequestReceived) and up.request.method == "ACK" and up.transaction is None
    assert core.unacknowledged == 0
    assert [e for _, e in run_until(core, 100.0) if isinstance(e, (SendMessage, AckTimeout))] == []


def test_a_bye_stops_the_2xx_retransmission_when_the_ack_was_lost() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite = incoming_invite(core)
    ok = answer(core, invite, 0.0)
    bye = make_request("BYE", branch="z9hG4bKbye", seq=2)
    bye.headers.set("To", ok.to)
    (up,) = for_tu(arrive(core, bye.serialise(), UAC, 0.7))
    assert isinstance(up, RequestReceived) and up.request.method == "BYE"
    assert core.unacknowledged == 0
    assert [e for _, e in run_until(core, 100.0) if isinstance(e, AckTimeout)] == []


# --- ACK for a 2xx, repeated (§13.2.2.4) ----------------------------------------------


def uac_with_answered_invite(core: UserAgentCore) -> tuple[Request, TransactionKey, Response]:
    invite = make_request("INVITE", branch="z9hG4bKout")
    key, events = core.send_request(invite, UAS, "UDP", 0.0)
    assert len(sent(events)) == 1 and core.transactions_in_flight() == 1
    ok = build_response(invite, 200, to_tag="callee")
    ok.headers.add("Contact", NameAddr(URI("sip", user="bob", host=UAS[0], port=UAS[1])))
    (up,) = arrive(core, ok.serialise(), UAS, 0.1)
    assert isinstance(up, ResponseReceived) and up.transaction == key and up.response.status == 200
    assert core.transactions_in_flight() == 0
    return invite, key, ok


def test_2xx_retransmissions_are_absorbed_until_the_tu_acks_then_answered_with_its_ack() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite, _, ok = uac_with_answered_invite(core)
    assert arrive(core, ok.serialise(), UAS, 0.6) == []  # the TU has not ACKed yet: absorbed

    ack = build_ack_for_2xx(invite, ok)
    (ack_sent,) = core.send_ack(ack, UAS, "UDP", 0.7)
    assert isinstance(ack_sent, SendMessage) and ack_sent.destination == UAS
    for now in (1.6, 3.6):  # each retransmission gets the very same ACK, nothing for the TU
        assert arrive(core, ok.serialise(), UAS, now) == [ack_sent]


def test_a_2xx_nobody_asked_for_is_a_stray_response() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite, _, ok = uac_with_answered_invite(core)
    core.send_ack(build_ack_for_2xx(invite, ok), UAS, "UDP", 0.2)
    fork = build_response(invite, 200, to_tag="second-fork")
    (stray,) = arrive(core, fork.serialise(), UAS, 0.3)
    assert isinstance(stray, StrayResponse) and stray.received.response.to.tag == "second-fork"


def test_a_remembered_ack_is_forgotten_after_64_t1() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite, _, ok = uac_with_answered_invite(core)
    core.send_ack(build_ack_for_2xx(invite, ok), UAS, "UDP", 0.2)
    later = make_request("INVITE", branch="z9hG4bKlater")
    later.headers.set("Call-ID", "call-2")
    core.send_ack(build_ack_for_2xx(later, build_response(later, 200, to_tag="x")), UAS, "UDP", 0.2 + 64 * T1)
    (stray,) = arrive(core, ok.serialise(), UAS, 0.3 + 64 * T1)
    assert isinstance(stray, StrayResponse)


def test_a_client_transaction_timeout_reaches_the_tu_once() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    key, _ = core.send_request(make_request("OPTIONS", branch="z9hG4bKopt"), UAS, "UDP", 0.0)
    fired = [e for _, e in run_until(core, 100.0) if not isinstance(e, SendMessage)]
    assert fired == [TransactionTimeout(key, fired[0].request, "F")]  # type: ignore[union-attr]
    assert core.transactions_in_flight() == 0


# --- CANCEL (§9.2) ----------------------------------------------------------------


def test_cancel_of_a_ringing_invite_200_to_cancel_487_to_invite() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite = incoming_invite(core)
    ringing = build_response(invite.request, 180, to_tag="ring-tag")
    core.send_response(ringing, 0.1, invite.transaction)
    assert core.transactions_in_flight() == 1

    cancel = build_cancel(make_request("INVITE"))
    events = arrive(core, cancel.serialise(), UAC, 0.5)
    answers = [parse_datagram(d) for d in sent(events)]
    assert [(r.status, r.cseq.method, r.to.tag) for r in answers] == [  # type: ignore[union-attr]
        (200, "CANCEL", "ring-tag"),
        (487, "INVITE", "ring-tag"),
    ]
    (cancelled,) = for_tu(events)
    assert isinstance(cancelled, InviteCancelled)
    assert cancelled.invite is invite.request and cancelled.cancel.request.method == "CANCEL"
    assert not core.server_pending(invite.transaction) and core.transactions_in_flight() == 0
    with pytest.raises(InvalidTransactionState):
        core.send_response(build_response(invite.request, 200, to_tag="ring-tag"), 0.6, invite.transaction)

    ack_for_487 = make_request("ACK")
    ack_for_487.headers.set("To", answers[1].to)
    assert arrive(core, ack_for_487.serialise(), UAC, 0.7) == []  # the INVITE transaction absorbs it


def test_cancel_matching_no_invite_is_answered_481() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    events = arrive(core, build_cancel(make_request("INVITE", branch="z9hG4bKnone")).serialise(), UAC, 0.0)
    assert [status_of(d) for d in sent(events)] == [481] and for_tu(events) == []


def test_cancel_after_the_invite_was_answered_gets_200_and_nothing_else() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2))
    invite = incoming_invite(core)
    answer(core, invite, 0.1)
    events = arrive(core, build_cancel(make_request("INVITE")).serialise(), UAC, 0.2)
    assert [status_of(d) for d in sent(events)] == [200] and for_tu(events) == []
    assert core.unacknowledged == 1  # the call stands


def test_without_auto_cancel_the_tu_gets_the_cancel() -> None:
    core = UserAgentCore(TimerConfig(t1=T1, t2=T2), auto_cancel=False)
    invite = incoming_invite(core)
    events = arrive(core, build_cancel(make_request("INVITE")).serialise(), UAC, 0.2)
    (up,) = for_tu(events)
    assert isinstance(up, RequestReceived) and up.cancels == invite.transaction
    assert core.server_pending(invite.transaction)
