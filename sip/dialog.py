"""UA core pieces around the 2xx to INVITE (RFC 3261 §13.2.2.4, §13.3.1.4).

The INVITE server transaction hands the 2xx to the TU and stops
retransmitting; the UAS core must retransmit it until the ACK arrives.  The
UAC core builds the ACK for a 2xx itself (it is a separate transaction-less
request with a new branch) and re-sends it for every 2xx retransmission.
Full dialog state (route sets, CSeq, targets) is the next layer up.
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import CSeq, Headers, NameAddr, Request, Response, Via, generate_branch
from .transaction import Addr, SendMessage, TimerConfig

__all__ = ["AckTimeout", "Invite2xxRetransmitter", "build_ack_for_2xx"]


@dataclass(frozen=True)
class AckTimeout:
    """No ACK for the 2xx within 64*T1: the dialog is confirmed but the
    session SHOULD be ended with a BYE (§13.3.1.4)."""

    response: Response


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
        self._call_id = response.call_id
        self._seq = response.cseq.seq
        self._to_tag = response.to.tag
        self._from_tag = response.from_.tag

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
        return (
            ack.method == "ACK"
            and ack.call_id == self._call_id
            and ack.cseq.seq == self._seq
            and ack.to.tag == self._to_tag
            and ack.from_.tag == self._from_tag
        )

    def ack_received(self, ack: Request) -> bool:
        """Stop if ``ack`` acknowledges our 2xx; returns whether it did."""
        if not self.done and self.matches(ack):
            self.done = True
            return True
        return False


def build_ack_for_2xx(invite: Request, response: Response, branch: str | None = None) -> Request:
    """The UAC's ACK for a 2xx (§13.2.2.4).

    Request-URI is the remote target (Contact of the 2xx), Route is the
    route set (Record-Route of the 2xx, reversed), and the top Via keeps the
    INVITE's sent-by with a new branch.  Loose routing is assumed; strict
    routers (no ``lr``) are not rewritten.
    """
    contacts = response.contacts
    target = contacts[0].uri if contacts else invite.uri
    top = invite.top_via
    params = {k: v for k, v in top.params.items() if k not in ("branch", "received", "rport")}
    via = Via(top.transport, top.host, top.port, {"branch": branch or generate_branch(), **params}, top.protocol)
    headers = Headers()
    headers.add("Via", via)
    for route in reversed(response.record_routes):
        headers.add("Route", NameAddr(route.uri, route.display_name, dict(route.params)))
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.from_)
    headers.add("To", response.to)
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", CSeq(invite.cseq.seq, "ACK"))
    return Request("ACK", target, headers)
