"""The user-agent core (RFC 3261 §8, §9.2, §13.2.2.4, §13.3.1.4), sans-I/O.

:class:`UserAgentCore` sits on a :class:`TransactionLayer` and does what a UA
does above its transactions, whatever the application:

* a 2xx to INVITE that we sent is retransmitted at T1, 2*T1, ... capped at
  T2, until its ACK (or a BYE of its dialog) arrives; after 64*T1 it gives
  up with :class:`AckTimeout`;
* the ACK we sent for a 2xx is repeated for each retransmission of that 2xx,
  and a 2xx the TU is still to ACK is absorbed;
* a CANCEL is answered 200 (481 when it matches no INVITE), and the INVITE
  it cancels 487 while still unanswered (:class:`InviteCancelled`).

Messages, addresses and ``now`` go in; events come out: :class:`SendMessage`
for the wire, the rest for the TU.  The caller keeps one timer at
:meth:`UserAgentCore.next_deadline` and calls :meth:`UserAgentCore.timers_due`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .message import Request, Response, build_response, generate_tag
from .transaction import (
    Addr,
    Event,
    InviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
)

__all__ = [
    "AckTimeout",
    "Invite2xxRetransmitter",
    "InviteCancelled",
    "StrayResponse",
    "UAEvent",
    "UserAgentCore",
]


@dataclass(frozen=True)
class AckTimeout:
    """No ACK for the 2xx within 64*T1: the dialog is confirmed but the
    session SHOULD be ended with a BYE (§13.3.1.4)."""

    response: Response


@dataclass(frozen=True)
class InviteCancelled:
    """``cancel`` matched the unanswered ``invite``: the core has answered
    the CANCEL with 200 and the INVITE with 487 (§9.2)."""

    cancel: RequestReceived
    invite: Request


@dataclass(frozen=True)
class StrayResponse:
    """A response that no pending client transaction and no ACK of ours
    accounts for: for example a 2xx from a second fork beyond a proxy."""

    received: ResponseReceived


UAEvent = Event | AckTimeout | InviteCancelled | StrayResponse

# A 2xx to INVITE and its ACK share the Call-ID, the CSeq number and the To tag.
AckKey = tuple[str, int, str]


def _ack_key(message: Request | Response) -> AckKey:
    return message.call_id, message.cseq.seq, message.to.tag or ""


def _is_2xx_to_invite(response: Response) -> bool:
    return 200 <= response.status < 300 and response.cseq.method == "INVITE"


class Invite2xxRetransmitter:
    """Retransmits a 2xx to INVITE at T1, 2*T1, ... capped at T2, until the
    matching ACK arrives or 64*T1 has passed.

    Retransmission happens whatever the transport, since a proxy may carry
    the response over UDP further down (§13.3.1.4).  Construct it right
    after the first 2xx was sent; it only produces retransmissions.
    """

    def __init__(
        self,
        response: Response,
        destination: Addr,
        transport: str,
        now: float,
        config: TimerConfig | None = None,
    ) -> None:
        cfg = config or TimerConfig()
        self.response = response
        self.destination = destination
        self.transport = transport
        self._t2 = cfg.t2
        self._interval = cfg.t1
        self._next_send = now + cfg.t1
        self._give_up = now + 64 * cfg.t1
        self.done = False

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return min(self._next_send, self._give_up)

    def timers_due(self, now: float) -> list[SendMessage | AckTimeout]:
        events: list[SendMessage | AckTimeout] = []
        while not self.done:
            if self._give_up <= now and self._give_up <= self._next_send:
                self.done = True
                events.append(AckTimeout(self.response))
            elif self._next_send <= now:
                events.append(SendMessage(self.response, self.destination, self.transport, None))
                self._interval = min(2 * self._interval, self._t2)
                self._next_send += self._interval
            else:
                break
        return events

    def matches(self, ack: Request) -> bool:
        """Is ``ack`` the ACK for our 2xx (same dialog and CSeq number)?"""
        response = self.response
        return ack.method == "ACK" and _ack_key(ack) == _ack_key(response) and ack.from_.tag == response.from_.tag

    def ack_received(self, ack: Request) -> bool:
        """Stop if ``ack`` acknowledges our 2xx; returns whether it did."""
        if not self.done and self.matches(ack):
            self.done = True
            return True
        return False


class UserAgentCore:
    """One SIP node's UA core over its transactions, driven by messages and ``now``.

    ``auto_cancel=False`` passes CANCELs to the TU as plain requests.
    """

    def __init__(
        self, timers: TimerConfig | None = None, *, auto_cancel: bool = True, accepted_state: bool = True
    ) -> None:
        self.timers = timers or TimerConfig()
        self.layer = TransactionLayer(self.timers, accepted_state=accepted_state)
        self.auto_cancel = auto_cancel
        # Client transactions still waiting for their final response.
        self._awaiting_final: set[TransactionKey] = set()
        self._retransmitters: dict[AckKey, Invite2xxRetransmitter] = {}
        # ACKs we sent for 2xx, to repeat on each 2xx retransmission (§13.2.2.4);
        # None until the TU has sent it.  Ordered by expiry.
        self._acks: OrderedDict[AckKey, tuple[float, SendMessage | None]] = OrderedDict()

    # -- state

    def server_pending(self, transaction: TransactionKey | None) -> bool:
        """Can the server transaction still take a final response?"""
        tx = self.layer.servers.get(transaction) if transaction is not None else None
        return tx is not None and tx.state in (State.TRYING, State.PROCEEDING)

    def transactions_in_flight(self) -> int:
        """Transactions still waiting for a final response: server ones the TU has not
        answered finally, client ones we have not heard the end of. Those in their
        Completed/Accepted wait (absorbing retransmissions) are not counted."""
        unanswered = sum(1 for key in self.layer.servers if self.server_pending(key))
        return unanswered + len(self._awaiting_final)

    @property
    def unacknowledged(self) -> int:
        """2xx responses still retransmitted, waiting for their ACK."""
        return len(self._retransmitters)

    def answer_budget(self, transaction: TransactionKey) -> int | None:
        """Bytes the answer to a stranger's datagram may take (None: no limit)."""
        return self.layer.answer_budget(transaction)

    # -- TU -> network

    def send_request(
        self, request: Request, destination: Addr, transport: str, now: float
    ) -> tuple[TransactionKey, list[UAEvent]]:
        """Start a client transaction; its final response comes back as one
        :class:`ResponseReceived`, or a :class:`TransactionTimeout` or
        :class:`TransportError` instead."""
        key, events = self.layer.send_request(request, destination, transport, now)
        self._awaiting_final.add(key)
        return key, self._after_layer(events, now)

    def send_response(self, response: Response, now: float, transaction: TransactionKey | None = None) -> list[UAEvent]:
        """Send ``response`` through its server transaction; a 2xx to INVITE
        is then retransmitted until its ACK (§13.3.1.4).  Raises what
        :meth:`TransactionLayer.send_response` raises."""
        events = self.layer.send_response(response, now, transaction)
        if _is_2xx_to_invite(response):
            sent = next((e for e in events if isinstance(e, SendMessage)), None)
            if sent is not None:
                self._retransmitters[_ack_key(response)] = Invite2xxRetransmitter(
                    response, sent.destination, sent.transport, now, self.timers
                )
        return list(events)

    def send_ack(self, ack: Request, destination: Addr, transport: str, now: float) -> list[UAEvent]:
        """Send the ACK for a 2xx (no transaction) and repeat it for every
        retransmission of that 2xx, for 64*T1."""
        events = self.layer.send_stateless(ack, destination, transport)
        sent = events[0]
        assert isinstance(sent, SendMessage)
        self._remember_ack(_ack_key(ack), sent, now)
        return list(events)

    def vouch(self, transaction: TransactionKey, now: float) -> list[UAEvent]:
        return list(self.layer.vouch(transaction, now))

    def transport_error(self, transaction: TransactionKey, now: float) -> list[UAEvent]:
        return self._after_layer(self.layer.transport_error(transaction, now), now)

    # -- network -> TU

    def receive(
        self,
        message: Request | Response,
        source: Addr,
        transport: str,
        now: float,
        *,
        trusted: bool = True,
        size: int | None = None,
    ) -> list[UAEvent]:
        """A parsed message from ``source``; see :meth:`TransactionLayer.receive`
        for ``trusted`` and ``size``."""
        events = self.layer.receive(message, source, transport, now, trusted=trusted, size=size)
        return self._after_layer(events, now)

    # -- timers

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (r.next_deadline() for r in self._retransmitters.values()) if d is not None]
        layer_deadline = self.layer.next_deadline()
        if layer_deadline is not None:
            deadlines.append(layer_deadline)
        return min(deadlines, default=None)

    def timers_due(self, now: float) -> list[UAEvent]:
        events = self._after_layer(self.layer.timers_due(now), now)
        for key, retransmitter in list(self._retransmitters.items()):
            events.extend(retransmitter.timers_due(now))
            if retransmitter.done:
                del self._retransmitters[key]
        return events

    # -- internals

    def _after_layer(self, events: list[Event], now: float) -> list[UAEvent]:
        out: list[UAEvent] = []
        for event in events:
            if isinstance(event, RequestReceived):
                out.extend(self._request(event, now))
            elif isinstance(event, ResponseReceived):
                out.extend(self._response(event, now))
            else:
                if isinstance(event, (TransactionTimeout, TransportError)):
                    self._awaiting_final.discard(event.transaction)
                out.append(event)
        return out

    def _request(self, event: RequestReceived, now: float) -> list[UAEvent]:
        request = event.request
        if request.method == "ACK":
            key = _ack_key(request)
            retransmitter = self._retransmitters.get(key)
            if retransmitter is not None and retransmitter.ack_received(request):
                del self._retransmitters[key]
        elif request.method == "BYE":
            # A BYE proves the peer has the 2xx even when its ACK was lost.
            dialog = (request.call_id, request.to.tag or "")
            for key in [k for k in self._retransmitters if (k[0], k[2]) == dialog]:
                del self._retransmitters[key]
        elif request.method == "CANCEL" and self.auto_cancel and event.transaction is not None:
            return self._cancel(event, now)
        return [event]

    def _cancel(self, event: RequestReceived, now: float) -> list[UAEvent]:
        """§9.2: 200 to the CANCEL, 487 to the INVITE if still unanswered."""
        assert event.transaction is not None
        invite_key = event.cancels
        invite_tx = self.layer.servers.get(invite_key) if invite_key is not None else None
        if not isinstance(invite_tx, InviteServerTransaction):
            return self.send_response(build_response(event.request, 481, to_tag=generate_tag()), now, event.transaction)
        provisional = invite_tx.last_provisional
        tag = provisional.to.tag if provisional is not None and provisional.to.tag else generate_tag()
        out = self.send_response(build_response(event.request, 200, to_tag=tag), now, event.transaction)
        if self.server_pending(invite_key):
            out += self.send_response(build_response(invite_tx.request, 487, to_tag=tag), now, invite_key)
            out.append(InviteCancelled(event, invite_tx.request))
        return out

    def _response(self, event: ResponseReceived, now: float) -> list[UAEvent]:
        response = event.response
        if event.transaction in self._awaiting_final:
            if response.status >= 200:
                self._awaiting_final.discard(event.transaction)
                if _is_2xx_to_invite(response):
                    self._remember_ack(_ack_key(response), None, now)
            return [event]
        if _is_2xx_to_invite(response):
            known = self._acks.get(_ack_key(response))
            if known is not None:
                _, ack = known
                return [ack] if ack is not None else []  # None: the TU is still to ACK it
        return [StrayResponse(event)]

    def _remember_ack(self, key: AckKey, ack: SendMessage | None, now: float) -> None:
        while self._acks:
            oldest = next(iter(self._acks))
            if self._acks[oldest][0] > now:
                break
            del self._acks[oldest]
        self._acks[key] = (now + 64 * self.timers.t1, ack)
        self._acks.move_to_end(key)
