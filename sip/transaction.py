"""RFC 3261 §17 transactions as sans-I/O state machines.

:class:`TransactionLayer` owns every client and server transaction of a
node.  It never reads a clock or touches a socket: callers pass messages and
``now`` (seconds, any monotonic origin) in, and get events out:

* :class:`SendMessage` - put this message on the wire,
* :class:`RequestReceived` / :class:`ResponseReceived` - hand to the TU,
* :class:`TransactionTimeout` - Timer B, F or H fired,
* :class:`TransportError` - the edge reported a failed send.

``next_deadline()`` says when ``timers_due(now)`` must next be called.

RFC 6026 is applied by default: an INVITE server transaction that sent a
2xx, and an INVITE client transaction that received one, wait in the
Accepted state (Timers L and M, 64*T1) instead of terminating at once.  The
2xx itself is still retransmitted by the TU (:mod:`sip.dialog`), exactly as
RFC 3261 §13.3.1.4 says; Accepted only absorbs INVITE retransmissions that
would otherwise look like new calls, and routes 2xx retransmissions to the
TU so that it can re-ACK.  ``accepted_state=False`` gives pure RFC 3261.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass, field, replace
from functools import cached_property

from .message import (
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    build_response,
)

__all__ = [
    "AMPLIFICATION_LIMIT",
    "Addr",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "State",
    "TimerConfig",
    "Transaction",
    "TransactionKey",
    "TransactionLayer",
    "TransactionTimeout",
    "TransportError",
    "build_cancel",
    "is_reliable",
]

Addr = tuple[str, int]
DEFAULT_PORT = 5060
DEFAULT_TLS_PORT = 5061
# A stranger's datagram gets at most this many times its own bytes back: answering a
# spoofed source must not make us an amplifier.
AMPLIFICATION_LIMIT = 2


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 timer values in seconds (§17.1.1.1, Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # Timer D: "at least 32 seconds" for unreliable transports.
    timer_d: float = 32.0
    # When the INVITE server transaction sends 100 Trying on its own
    # (§17.2.1: unless the TU answers within 200 ms).  0 sends it at once,
    # None never.
    trying_delay: float | None = 0.2


def is_reliable(transport: str) -> bool:
    """Only UDP is unreliable among SIP transports (TCP, TLS, SCTP, WS, WSS)."""
    return transport.upper() not in ("UDP", "DTLS")


@dataclass(frozen=True)
class TransactionKey:
    """Identifies a transaction (§17.1.3, §17.2.3).

    ``branch`` + ``method`` for RFC 3261 requests, plus ``sent_by`` on the
    server side.  Requests without the magic cookie (RFC 2543 peers) are
    keyed by ``legacy``: Request-URI, From tag, Call-ID, CSeq number and top
    Via.  ``method`` is INVITE for an ACK, so an ACK finds its INVITE.
    """

    branch: str
    method: str
    sent_by: tuple[str, int | None] | None = None
    legacy: tuple[str, ...] | None = None


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


# --- Events ------------------------------------------------------------------


@dataclass(frozen=True)
class SendMessage:
    """Send ``message`` to ``destination`` over ``transport``.

    For a response on a reliable transport, ``destination`` is the source of
    the request: the edge should reuse that connection (RFC 3261 §18.2.2).
    """

    message: Request | Response
    destination: Addr
    transport: str
    transaction: TransactionKey | None = None

    @cached_property
    def data(self) -> bytes:
        # Serialised once, however many look (an amplification budget, then the wire).
        return self.message.serialise()


@dataclass(frozen=True)
class RequestReceived:
    """A new request for the TU.

    ``transaction`` is None for an ACK that matched no INVITE server
    transaction (the ACK for a 2xx, which the TU/dialog must consume).  For
    a CANCEL, ``cancels`` names the INVITE server transaction it targets
    (§9.2), or is None when there is none (answer 481).
    """

    request: Request
    source: Addr
    transport: str
    transaction: TransactionKey | None
    cancels: TransactionKey | None = None


@dataclass(frozen=True)
class ResponseReceived:
    """A response for the TU; ``transaction`` None means it matched none
    (e.g. a 2xx retransmission after the INVITE transaction ended)."""

    response: Response
    source: Addr
    transport: str
    transaction: TransactionKey | None


@dataclass(frozen=True)
class TransactionTimeout:
    """Timer B or F (no final response) or H (no ACK for a non-2xx final)."""

    transaction: TransactionKey
    request: Request
    timer: str


@dataclass(frozen=True)
class TransportError:
    transaction: TransactionKey
    request: Request


Event = SendMessage | RequestReceived | ResponseReceived | TransactionTimeout | TransportError


# --- Transactions ------------------------------------------------------------


class Transaction:
    """Common state of the four §17 state machines."""

    is_server = False

    def __init__(
        self,
        key: TransactionKey,
        request: Request,
        peer: Addr,
        transport: str,
        config: TimerConfig,
        accepted_state: bool,
    ) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.transport = transport
        self.reliable = is_reliable(transport)
        self.config = config
        self.accepted_state = accepted_state
        self.state = State.TERMINATED
        self.timers: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.last_response: Response | None = None
        # Current retransmission interval of Timer A, E or G.
        self.interval = config.t1
        # A server transaction for a request from an untrusted source, until the TU
        # vouches for it: no 100 Trying of its own, and a non-2xx final response is
        # sent once, with no retransmission, and ends the transaction.
        self.quiet = False
        # Bytes a quiet transaction may still send (None: no limit, e.g. over TCP).
        self.budget: int | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key.method} {self.state.value}>"

    def _set_timer(self, name: str, deadline: float) -> None:
        self.timers[name] = deadline
        self.dirty.add(name)

    def _clear_timers(self, *names: str) -> None:
        for name in names or tuple(self.timers):
            self.timers.pop(name, None)

    def _send(self, message: Request | Response) -> SendMessage:
        return SendMessage(message, self.peer, self.transport, self.key)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self.timers.clear()

    def on_timer(self, name: str, deadline: float) -> list[Event]:
        raise NotImplementedError

    def on_transport_error(self) -> list[Event]:
        self._terminate()
        return [TransportError(self.key, self.request)]


class InviteClientTransaction(Transaction):
    """§17.1.1, Figure 5 (plus RFC 6026 Accepted)."""

    def start(self, now: float) -> list[Event]:
        self.state = State.CALLING
        t1 = self.config.t1
        if not self.reliable:
            self.interval = t1
            self._set_timer("A", now + t1)
        self._set_timer("B", now + 64 * t1)
        self.ack: Request | None = None
        return [self._send(self.request)]

    def on_timer(self, name: str, deadline: float) -> list[Event]:
        if name == "A" and self.state is State.CALLING:
            # Timer A doubles without the T2 cap (§17.1.1.2).
            self.interval *= 2
            self._set_timer("A", deadline + self.interval)
            return [self._send(self.request)]
        if name == "B" and self.state is State.CALLING:
            self._terminate()
            return [TransactionTimeout(self.key, self.request, "B")]
        if name in ("D", "M"):
            self._terminate()
        return []

    def on_response(self, response: Response, source: Addr, now: float) -> list[Event]:
        up = ResponseReceived(response, source, self.transport, self.key)
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                self.state = State.PROCEEDING
                self._clear_timers("A", "B")
                return [up]
            self.last_response = response
            if status < 300:
                self._clear_timers()
                if self.accepted_state:
                    self.state = State.ACCEPTED
                    self._set_timer("M", now + 64 * self.config.t1)
                else:
                    self._terminate()
                return [up]
            self._clear_timers()
            self.ack = self._build_ack(response)
            events: list[Event] = [self._send(self.ack), up]
            if self.reliable:
                self._terminate()
            else:
                self.state = State.COMPLETED
                self._set_timer("D", now + self.config.timer_d)
            return events
        if self.state is State.COMPLETED and status >= 300 and self.ack is not None:
            return [self._send(self.ack)]
        if self.state is State.ACCEPTED and 200 <= status < 300:
            return [up]
        return []

    def _build_ack(self, response: Response) -> Request:
        """ACK for a non-2xx final response, §17.1.1.3."""
        req = self.request
        headers = Headers()
        headers.add("Via", req.top_via)
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", req.from_)
        headers.add("To", response.to)
        headers.add("Call-ID", req.call_id)
        headers.add("CSeq", CSeq(req.cseq.seq, "ACK"))
        return Request("ACK", req.uri, headers)


class NonInviteClientTransaction(Transaction):
    """§17.1.2, Figure 6."""

    def start(self, now: float) -> list[Event]:
        self.state = State.TRYING
        if not self.reliable:
            self.interval = self.config.t1
            self._set_timer("E", now + self.config.t1)
        self._set_timer("F", now + 64 * self.config.t1)
        return [self._send(self.request)]

    def on_timer(self, name: str, deadline: float) -> list[Event]:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            if self.state is State.TRYING:
                self.interval = min(2 * self.interval, self.config.t2)
            else:
                self.interval = self.config.t2
            self._set_timer("E", deadline + self.interval)
            return [self._send(self.request)]
        if name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            self._terminate()
            return [TransactionTimeout(self.key, self.request, "F")]
        if name == "K":
            self._terminate()
        return []

    def on_response(self, response: Response, source: Addr, now: float) -> list[Event]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # Completed absorbs retransmitted finals.
        up = ResponseReceived(response, source, self.transport, self.key)
        if response.status < 200:
            self.state = State.PROCEEDING
            return [up]
        self.last_response = response
        self._clear_timers()
        if self.reliable:
            self._terminate()
        else:
            self.state = State.COMPLETED
            self._set_timer("K", now + self.config.t4)
        return [up]


class InviteServerTransaction(Transaction):
    """§17.2.1, Figure 7 (plus RFC 6026 Accepted)."""

    is_server = True

    def start(self, now: float) -> list[Event]:
        self.state = State.PROCEEDING
        self.last_provisional: Response | None = None
        return [] if self.quiet else self._arm_trying(now)

    def _arm_trying(self, now: float) -> list[Event]:
        delay = self.config.trying_delay
        if delay == 0:
            return self._send_trying()
        if delay is not None:
            self._set_timer("Trying", now + delay)
        return []

    def vouch(self, now: float) -> list[Event]:
        if not self.quiet:
            return []
        self.quiet = False
        if self.state is State.PROCEEDING and self.last_provisional is None:
            return self._arm_trying(now)
        return []

    def _send_trying(self) -> list[Event]:
        self.timers.pop("Trying", None)
        self.last_provisional = build_response(self.request, 100)
        return [self._send(self.last_provisional)]

    def on_timer(self, name: str, deadline: float) -> list[Event]:
        if name == "Trying" and self.state is State.PROCEEDING and self.last_provisional is None:
            return self._send_trying()
        if name == "G" and self.state is State.COMPLETED and self.last_response is not None:
            self.interval = min(2 * self.interval, self.config.t2)
            self._set_timer("G", deadline + self.interval)
            return [self._send(self.last_response)]
        if name == "H" and self.state is State.COMPLETED:
            self._terminate()
            return [TransactionTimeout(self.key, self.request, "H")]
        if name in ("I", "L"):
            self._terminate()
        return []

    def on_retransmission(self, now: float) -> list[Event]:
        if self.state is State.PROCEEDING:
            if self.last_provisional is not None:
                return [self._send(self.last_provisional)]
            if "Trying" in self.timers:
                # The UAC is already retransmitting: no reason to wait.
                return self._send_trying()
            return []
        if self.state is State.COMPLETED and self.last_response is not None:
            return [self._send(self.last_response)]
        return []  # Confirmed and Accepted absorb.

    def on_ack(self, ack: Request, source: Addr, now: float) -> list[Event]:
        if self.state is State.COMPLETED:
            self._clear_timers("G", "H")
            if self.reliable:
                self._terminate()
            else:
                self.state = State.CONFIRMED
                self._set_timer("I", now + self.config.t4)
            return []
        if self.state is State.ACCEPTED:
            # RFC 6026 §8.7: an ACK in Accepted goes to the TU.
            return [RequestReceived(ack, source, self.transport, self.key)]
        return []

    def send_response(self, response: Response, now: float) -> list[Event]:
        if self.state is not State.PROCEEDING:
            if self.state is State.ACCEPTED and 200 <= response.status < 300:
                return [self._send(response)]
            raise InvalidTransactionState(f"cannot send {response.status} in {self.state.value}")
        status = response.status
        if status < 200:
            self.timers.pop("Trying", None)
            self.last_provisional = response
            return [self._send(response)]
        self.last_response = response
        self._clear_timers()
        if self.quiet and status >= 300:
            self._terminate()
            return [self._send(response)]
        if status < 300:
            if self.accepted_state:
                self.state = State.ACCEPTED
                self._set_timer("L", now + 64 * self.config.t1)
            else:
                self._terminate()
            return [self._send(response)]
        self.state = State.COMPLETED
        if not self.reliable:
            self.interval = self.config.t1
            self._set_timer("G", now + self.config.t1)
        self._set_timer("H", now + 64 * self.config.t1)
        return [self._send(response)]


class NonInviteServerTransaction(Transaction):
    """§17.2.2, Figure 8."""

    is_server = True

    def start(self, now: float) -> list[Event]:
        self.state = State.TRYING
        self.last_provisional: Response | None = None
        return []

    def on_timer(self, name: str, deadline: float) -> list[Event]:
        if name == "J":
            self._terminate()
        return []

    def on_retransmission(self, now: float) -> list[Event]:
        if self.state is State.PROCEEDING and self.last_provisional is not None:
            return [self._send(self.last_provisional)]
        if self.state is State.COMPLETED and self.last_response is not None:
            return [self._send(self.last_response)]
        return []  # Trying absorbs.

    def send_response(self, response: Response, now: float) -> list[Event]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise InvalidTransactionState(f"cannot send {response.status} in {self.state.value}")
        if response.status < 200:
            self.state = State.PROCEEDING
            self.last_provisional = response
            return [self._send(response)]
        self.last_response = response
        if self.reliable or (self.quiet and response.status >= 300):
            self._terminate()
        else:
            self.state = State.COMPLETED
            self._set_timer("J", now + 64 * self.config.t1)
        return [self._send(response)]


class InvalidTransactionState(RuntimeError):
    """The TU asked for something the transaction's state forbids."""


ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
ClientTransaction = InviteClientTransaction | NonInviteClientTransaction


# --- Layer -------------------------------------------------------------------


@dataclass(order=True)
class _TimerEntry:
    deadline: float
    seq: int
    tx: Transaction = field(compare=False)
    name: str = field(compare=False)


class TransactionLayer:
    """All transactions of one SIP node, driven by messages and ``now``."""

    def __init__(self, timers: TimerConfig | None = None, *, accepted_state: bool = True) -> None:
        self.config = timers or TimerConfig()
        self.accepted_state = accepted_state
        self.clients: dict[TransactionKey, ClientTransaction] = {}
        self.servers: dict[TransactionKey, ServerTransaction] = {}
        self._heap: list[_TimerEntry] = []
        self._seq = 0
        # Responses not sent because they would have amplified a stranger's datagram.
        self.suppressed = 0

    # -- lookup

    def get(self, key: TransactionKey) -> Transaction | None:
        return self.servers.get(key) or self.clients.get(key)

    def __len__(self) -> int:
        return len(self.clients) + len(self.servers)

    # -- TU -> network

    def send_request(
        self, request: Request, destination: Addr, transport: str, now: float
    ) -> tuple[TransactionKey, list[Event]]:
        """Start a client transaction for ``request`` (not ACK).

        The top Via must carry an RFC 3261 branch (see
        :func:`sip.message.generate_branch`); destination resolution
        (RFC 3263) is the caller's business.
        """
        if request.method == "ACK":
            raise ValueError("ACK is not a transaction; use send_stateless()")
        via = request.top_via
        if not via.is_rfc3261_branch:
            raise ValueError("top Via needs a branch starting with z9hG4bK")
        key = TransactionKey(via.branch or "", request.method)
        if key in self.clients:
            raise ValueError(f"client transaction {key} already exists")
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        tx = cls(key, request, destination, transport, self.config, self.accepted_state)
        self.clients[key] = tx
        events = tx.start(now)
        self._after(tx)
        return key, events

    def send_stateless(self, message: Request | Response, destination: Addr, transport: str) -> list[Event]:
        """Send outside any transaction (ACK for 2xx, 2xx retransmissions)."""
        return [SendMessage(message, destination, transport, None)]

    def send_response(self, response: Response, now: float, transaction: TransactionKey | None = None) -> list[Event]:
        """Send a response through its server transaction.

        ``transaction`` may be omitted for RFC 3261 requests: it is derived
        from the response's top Via and CSeq.  Raises LookupError when no
        such transaction exists.
        """
        key = transaction or self._server_key_from_response(response)
        tx = self.servers.get(key)
        if tx is None:
            raise LookupError(f"no server transaction {key}")
        quiet = tx.quiet
        events = tx.send_response(response, now)
        if quiet:
            events = self._within_budget(tx, events)
        self._after(tx)
        return events

    def transport_error(self, transaction: TransactionKey, now: float) -> list[Event]:
        """The edge failed to send for ``transaction`` (§17.1.4, §17.2.4)."""
        tx = self.get(transaction)
        if tx is None:
            return []
        events = tx.on_transport_error()
        self._after(tx)
        return events

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
    ) -> list[Event]:
        """``trusted=False`` for a message from a source outside the trusted
        networks: responses then go to the packet's source address and port
        whatever its Via says (no ``maddr``, no other host), and a new server
        transaction is quiet until :meth:`vouch`: no 100 Trying, a non-2xx
        final response sent once and no retransmission.  ``size``, the
        datagram's length, caps what a quiet transaction sends in return at
        ``AMPLIFICATION_LIMIT`` times as many bytes; a larger response is
        not sent (counted in ``suppressed``)."""
        if isinstance(message, Response):
            return self._receive_response(message, source, transport, now)
        return self._receive_request(message, source, transport, now, trusted, size)

    def answer_budget(self, transaction: TransactionKey) -> int | None:
        """Bytes a quiet transaction may still send; None when unlimited."""
        tx = self.servers.get(transaction)
        return tx.budget if tx is not None and tx.quiet else None

    def _within_budget(self, tx: Transaction, events: list[Event]) -> list[Event]:
        if not tx.quiet or tx.budget is None:
            return events
        kept: list[Event] = []
        for event in events:
            if isinstance(event, SendMessage):
                cost = len(event.data)
                if cost > tx.budget:
                    self.suppressed += 1
                    continue
                tx.budget -= cost
            kept.append(event)
        return kept

    def vouch(self, transaction: TransactionKey, now: float) -> list[Event]:
        """The TU trusts this request now (it authenticated): its server
        transaction behaves as §17.2 says, retransmissions included."""
        tx = self.servers.get(transaction)
        if tx is None:
            return []
        events = tx.vouch(now) if isinstance(tx, InviteServerTransaction) else []
        tx.quiet = False
        self._after(tx)
        return events

    def _receive_response(self, response: Response, source: Addr, transport: str, now: float) -> list[Event]:
        via = response.top_via
        tx = self.clients.get(TransactionKey(via.branch or "", response.cseq.method))
        if tx is None:
            return [ResponseReceived(response, source, transport, None)]
        events = tx.on_response(response, source, now)
        self._after(tx)
        return events

    def _receive_request(
        self,
        request: Request,
        source: Addr,
        transport: str,
        now: float,
        trusted: bool = True,
        size: int | None = None,
    ) -> list[Event]:
        _stamp_via(request.top_via, source)
        method = request.method
        if method == "ACK":
            key = self._server_key(request, "INVITE")
            tx = self.servers.get(key)
            if isinstance(tx, InviteServerTransaction) and _ack_matches(tx, request):
                acked = tx.on_ack(request, source, now)
                self._after(tx)
                return acked
            return [RequestReceived(request, source, transport, None)]
        key = self._server_key(request, method)
        existing = self.servers.get(key)
        if existing is not None:
            if existing.quiet and existing.budget is not None and size is not None:
                existing.budget += AMPLIFICATION_LIMIT * size
            replay = self._within_budget(existing, existing.on_retransmission(now))
            self._after(existing)
            return replay
        cancels = None
        if method == "CANCEL":
            target = replace(key, method="INVITE")
            if isinstance(self.servers.get(target), InviteServerTransaction):
                cancels = target
        reliable = is_reliable(transport)
        peer = source if reliable or not trusted else _response_address(request.top_via, transport)
        cls = InviteServerTransaction if method == "INVITE" else NonInviteServerTransaction
        tx = cls(key, request, peer, transport, self.config, self.accepted_state)
        tx.quiet = not trusted
        if tx.quiet and size is not None:
            tx.budget = AMPLIFICATION_LIMIT * size
        self.servers[key] = tx
        events: list[Event] = [RequestReceived(request, source, transport, key, cancels)]
        events.extend(tx.start(now))
        self._after(tx)
        return events

    # -- timers

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry.tx.timers.get(entry.name) == entry.deadline and entry.tx.state is not State.TERMINATED:
                return entry.deadline
            heapq.heappop(heap)
        return None

    def timers_due(self, now: float) -> list[Event]:
        """Fire every timer whose deadline is <= ``now``, in deadline order."""
        events: list[Event] = []
        heap = self._heap
        while heap and heap[0].deadline <= now:
            entry = heapq.heappop(heap)
            tx = entry.tx
            if tx.state is State.TERMINATED or tx.timers.get(entry.name) != entry.deadline:
                continue
            del tx.timers[entry.name]
            events.extend(tx.on_timer(entry.name, entry.deadline))
            self._after(tx)
        return events

    # -- internals

    def _after(self, tx: Transaction) -> None:
        if tx.state is State.TERMINATED:
            table: dict[TransactionKey, ServerTransaction] | dict[TransactionKey, ClientTransaction]
            table = self.servers if tx.is_server else self.clients
            if table.get(tx.key) is tx:
                del table[tx.key]
            tx.dirty.clear()
            return
        for name in tx.dirty:
            deadline = tx.timers.get(name)
            if deadline is not None:
                self._seq += 1
                heapq.heappush(self._heap, _TimerEntry(deadline, self._seq, tx, name))
        tx.dirty.clear()

    @staticmethod
    def _server_key(request: Request, method: str) -> TransactionKey:
        via = request.top_via
        if via.is_rfc3261_branch:
            return TransactionKey(via.branch or "", method, via.sent_by)
        # RFC 2543 matching (§17.2.3): no usable branch, so the request's
        # identity is what the transaction is keyed by.  The To tag is left
        # out so the ACK (which carries the tag of our response) matches.
        legacy = (
            str(request.uri),
            request.from_.tag or "",
            request.call_id,
            str(request.cseq.seq),
            str(via),
        )
        return TransactionKey("", method, None, legacy)

    @staticmethod
    def _server_key_from_response(response: Response) -> TransactionKey:
        via = response.top_via
        if not via.is_rfc3261_branch:
            raise LookupError("response to an RFC 2543 request: pass transaction= explicitly")
        method = response.cseq.method
        return TransactionKey(via.branch or "", "INVITE" if method == "ACK" else method, via.sent_by)


def _ack_matches(tx: InviteServerTransaction, ack: Request) -> bool:
    if tx.key.legacy is None:
        return True
    # RFC 2543 ACK: the To tag must be the one of the response it acknowledges.
    resp = tx.last_response
    return resp is None or resp.to.tag == ack.to.tag


def _stamp_via(via: Via, source: Addr) -> None:
    """§18.2.1 received, and RFC 3581 rport, on an incoming request."""
    host, port = source
    if via.has_rport and via.params.get("rport") is None:
        via.params["received"] = host
        via.params["rport"] = str(port)
    elif via.host.strip("[]") != host:
        via.params["received"] = host


def _response_address(via: Via, transport: str) -> Addr:
    """Where responses go on an unreliable transport (§18.2.2, RFC 3581)."""
    default = DEFAULT_TLS_PORT if via.transport in ("TLS", "WSS") else DEFAULT_PORT
    maddr = via.params.get("maddr")
    if maddr:
        return maddr, via.port or default
    received = via.received
    if received:
        rport = via.params.get("rport")
        return received, int(rport) if rport else (via.port or default)
    return via.host, via.port or default


def build_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE, §9.1: same Request-URI, Call-ID, From, To,
    CSeq number, Route and top Via (hence the same branch)."""
    headers = Headers()
    top = invite.top_via
    headers.add("Via", Via(top.transport, top.host, top.port, dict(top.params), top.protocol))
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.from_)
    headers.add("To", invite.to)
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", CSeq(invite.cseq.seq, "CANCEL"))
    return Request("CANCEL", invite.uri, headers)
