"""Dialogs and the UA core around them (RFC 3261 §12-§15).

* :class:`Dialog` / :class:`DialogTable`: dialog state (§12) - id, local and
  remote CSeq, remote target, route set (loose and strict routing), early
  and confirmed - plus building and validating in-dialog requests, and
  INVITE glare (491, §14).
* The UAC builds the ACK for a 2xx itself (:func:`build_ack_for_2xx` or
  :meth:`Dialog.create_ack`): a separate transaction-less request with a
  new branch.  Retransmitting our 2xx until its ACK, and repeating our ACK,
  belong to the user-agent core, :mod:`sip.useragent`.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from .message import (
    URI,
    CSeq,
    Headers,
    HeaderValue,
    NameAddr,
    Request,
    Response,
    Via,
    build_response,
    generate_branch,
)

__all__ = [
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogState",
    "DialogTable",
    "build_ack_for_2xx",
]


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


# --- Dialogs (§12, §13, §14, §15) --------------------------------------------

# Requests that refresh the remote target when they carry a Contact (§12.2,
# RFC 3311 for UPDATE).
TARGET_REFRESH_METHODS = frozenset(("INVITE", "UPDATE"))


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogError(RuntimeError):
    """The TU asked the dialog for something §12-§14 forbid (e.g. a second
    re-INVITE while one is in progress)."""


@dataclass(frozen=True)
class DialogId:
    """Call-ID plus local and remote tag (§12): how our side names a dialog."""

    call_id: str
    local_tag: str
    remote_tag: str


def _copy_addr(addr: NameAddr) -> NameAddr:
    return NameAddr(addr.uri, addr.display_name, dict(addr.params))


class Dialog:
    """Dialog state of one side (§12.1), and in-dialog requests (§12.2).

    Build one with :meth:`uas` (from the INVITE and the 1xx/2xx with our To
    tag we send) or :meth:`uac` (from our INVITE and a 1xx/2xx with a To tag).
    The dialog knows nothing of transactions: the TU passes it what it sends
    and receives, and it answers with requests to send or responses to
    reject with.
    """

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: URI,
        route_set: list[NameAddr],
        local_seq: int | None,
        remote_seq: int | None,
        state: DialogState,
        is_uac: bool,
        secure: bool = False,
        local_contact: NameAddr | None = None,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.state = state
        self.is_uac = is_uac
        self.secure = secure
        self.local_contact = local_contact
        # CSeq of an INVITE transaction in progress in either direction; the
        # initial INVITE counts until its final response (§14.1, §14.2).
        self.client_invite: int | None = None
        self.server_invite: int | None = None

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.state.value} {'UAC' if self.is_uac else 'UAS'}>"

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    # -- creation

    @classmethod
    def uas(cls, request: Request, response: Response, local_contact: NameAddr | None = None) -> Dialog:
        """The UAS side, from a dialog-creating request and our 1xx/2xx (§12.1.1)."""
        to_tag = response.to.tag
        if to_tag is None or not 100 < response.status < 300:
            raise DialogError("a dialog needs a 101-299 response with a To tag")
        contacts = request.contacts
        dialog = cls(
            call_id=request.call_id,
            local_tag=to_tag,
            remote_tag=request.from_.tag or "",
            local_uri=_copy_addr(response.to),
            remote_uri=_copy_addr(request.from_),
            remote_target=contacts[0].uri if contacts else request.from_.uri,
            route_set=[_copy_addr(r) for r in request.record_routes],
            local_seq=None,
            remote_seq=request.cseq.seq,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            is_uac=False,
            secure=request.uri.scheme == "sips",
            local_contact=local_contact,
        )
        if request.method == "INVITE" and response.status < 200:
            dialog.server_invite = request.cseq.seq
        return dialog

    @classmethod
    def uac(cls, request: Request, response: Response) -> Dialog:
        """The UAC side, from our request and a 1xx/2xx with a To tag (§12.1.2)."""
        to_tag = response.to.tag
        if to_tag is None or not 100 < response.status < 300:
            raise DialogError("a dialog needs a 101-299 response with a To tag")
        contacts = response.contacts
        request_contacts = request.contacts
        dialog = cls(
            call_id=request.call_id,
            local_tag=request.from_.tag or "",
            remote_tag=to_tag,
            local_uri=_copy_addr(request.from_),
            remote_uri=_copy_addr(response.to),
            remote_target=contacts[0].uri if contacts else request.uri,
            route_set=[_copy_addr(r) for r in reversed(response.record_routes)],
            local_seq=request.cseq.seq,
            remote_seq=None,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            is_uac=True,
            secure=request.uri.scheme == "sips",
            local_contact=request_contacts[0] if request_contacts else None,
        )
        if request.method == "INVITE" and response.status < 200:
            dialog.client_invite = request.cseq.seq
        return dialog

    # -- UAC side: responses to our requests

    def receive_response(self, request: Request, response: Response) -> None:
        """Update state from a response to a request we sent in this dialog
        (including the dialog-creating INVITE)."""
        status = response.status
        method = request.method
        if status >= 200 and method == "INVITE" and self.client_invite == request.cseq.seq:
            self.client_invite = None
        if status in (408, 481):
            # §12.2.1.2: the dialog is gone on the far side.
            self.state = DialogState.TERMINATED
            return
        if method == "INVITE" and self.state is DialogState.EARLY:
            if status >= 300:
                self.state = DialogState.TERMINATED
                return
            if status >= 200:
                self.state = DialogState.CONFIRMED
                # §13.2.2.4: the route set is recomputed from the 2xx.
                self.route_set = [_copy_addr(r) for r in reversed(response.record_routes)]
        if method in TARGET_REFRESH_METHODS and 100 < status < 300:
            contacts = response.contacts
            if contacts:
                self.remote_target = contacts[0].uri
        if method == "BYE" and 200 <= status < 300:
            self.state = DialogState.TERMINATED

    # -- UAS side: requests from the peer and our answers

    def receive_request(self, request: Request) -> Response | None:
        """Validate and absorb an in-dialog request (§12.2.2, §14.2).

        Returns the response to reject it with (500 for an out-of-order
        CSeq or a re-INVITE overlapping ours on the server side, 491 for a
        re-INVITE while our own is in progress), or None when the TU should
        handle it.
        """
        method = request.method
        seq = request.cseq.seq
        if method in ("ACK", "CANCEL"):
            # They carry the CSeq number of the request they belong to.
            return None
        if self.remote_seq is not None and seq < self.remote_seq:
            return self._reject(request, 500, "Out of order CSeq")
        if method == "INVITE":
            if self.server_invite is not None and self.server_invite < seq:
                # §14.2: the earlier INVITE has no final answer yet.
                return self._reject(request, 500, retry_after=secrets.randbelow(11))
            if self.client_invite is not None:
                return self._reject(request, 491)
            self.server_invite = seq
        self.remote_seq = seq
        if method in TARGET_REFRESH_METHODS:
            contacts = request.contacts
            if contacts:
                self.remote_target = contacts[0].uri
        if method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    def response_sent(self, request: Request, response: Response) -> None:
        """Tell the dialog about a final response we sent to a request in it."""
        status = response.status
        if status < 200:
            return
        if request.method == "INVITE" and self.server_invite == request.cseq.seq:
            self.server_invite = None
            if self.state is DialogState.EARLY:
                self.state = DialogState.CONFIRMED if status < 300 else DialogState.TERMINATED

    def _reject(
        self, request: Request, status: int, reason: str | None = None, retry_after: int | None = None
    ) -> Response:
        response = build_response(request, status, reason, to_tag=self.local_tag)
        if retry_after is not None:
            response.headers.add("Retry-After", str(retry_after))
        return response

    # -- building requests

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, HeaderValue]] = (),
        via: Via | None = None,
    ) -> Request:
        """A request within the dialog (§12.2.1.1): BYE, re-INVITE, INFO, ...

        The CSeq is the next local sequence number.  Without ``via`` the
        request has no Via: the edge adds its own with a fresh branch.
        Raises :class:`DialogError` for a re-INVITE while another INVITE
        transaction of this dialog is in progress (§14.1).
        """
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} belongs to an INVITE: use create_ack() or build_cancel()")
        if self.state is DialogState.TERMINATED:
            raise DialogError("the dialog is terminated")
        if method == "INVITE" and (self.client_invite is not None or self.server_invite is not None):
            raise DialogError("an INVITE transaction is already in progress in this dialog")
        # §12.2.1.1: an empty local sequence number starts anywhere below 2^31.
        self.local_seq = 1 if self.local_seq is None else self.local_seq + 1
        if method == "INVITE":
            self.client_invite = self.local_seq
        return self._build(method, self.local_seq, body, content_type, headers, via)

    def create_ack(
        self, invite: Request, *, body: bytes = b"", content_type: str | None = None, via: Via | None = None
    ) -> Request:
        """The ACK for a 2xx to ``invite`` (§13.2.2.4): the INVITE's CSeq number."""
        return self._build("ACK", invite.cseq.seq, body, content_type, (), via)

    def _build(
        self,
        method: str,
        seq: int,
        body: bytes,
        content_type: str | None,
        extra: Iterable[tuple[str, HeaderValue]],
        via: Via | None,
    ) -> Request:
        uri, routes = self.request_target()
        headers = Headers()
        if via is not None:
            headers.add("Via", via)
        for route in routes:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        local = _copy_addr(self.local_uri)
        local.tag = self.local_tag
        remote = _copy_addr(self.remote_uri)
        remote.tag = self.remote_tag or None
        headers.add("From", local)
        headers.add("To", remote)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", CSeq(seq, method))
        if self.local_contact is not None and method in TARGET_REFRESH_METHODS:
            headers.add("Contact", self.local_contact)
        for name, value in extra:
            headers.add(name, value)
        if content_type is not None:
            headers.add("Content-Type", content_type)
        return Request(method, uri, headers, body)

    def request_target(self) -> tuple[URI, list[NameAddr]]:
        """Request-URI and Route headers for the next request (§12.2.1.1).

        Loose routing when the first route has ``lr``; otherwise the strict
        router becomes the Request-URI and the remote target goes last in
        Route.
        """
        routes = [_copy_addr(r) for r in self.route_set]
        if not routes:
            return self.remote_target, []
        first = routes[0].uri
        if "lr" in first.params:
            return self.remote_target, routes
        # Strict route: parameters not allowed in a Request-URI are dropped
        # (§19.1.1: method, maddr, ttl, transport, lr are; headers are not).
        strict = replace(first, headers=None)
        return strict, [*routes[1:], NameAddr(self.remote_target)]

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED


class DialogTable:
    """The dialogs of a UA, found from incoming requests (§12.2.2)."""

    def __init__(self) -> None:
        self._dialogs: dict[DialogId, Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def add(self, dialog: Dialog) -> None:
        self._dialogs[dialog.id] = dialog

    def remove(self, dialog: Dialog) -> None:
        self._dialogs.pop(dialog.id, None)

    def get(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.get(dialog_id)

    def find(self, request: Request) -> Dialog | None:
        """The dialog an incoming request belongs to, if any."""
        to_tag = request.to.tag
        if to_tag is None:
            return None
        return self._dialogs.get(DialogId(request.call_id, to_tag, request.from_.tag or ""))

    def match(self, request: Request) -> tuple[Dialog | None, Response | None]:
        """Route an incoming request: ``(dialog, None)`` for the TU to handle in
        the dialog, ``(None, None)`` for an out-of-dialog request (no To tag, or
        a stray ACK to drop), ``(dialog or None, response)`` to reject with a
        481 (no such dialog) or whatever :meth:`Dialog.receive_request` says.
        Terminated dialogs are removed once they have seen their last request.
        """
        if request.to.tag is None:
            return None, None
        dialog = self.find(request)
        if dialog is None:
            if request.method == "ACK":
                return None, None
            return None, build_response(request, 481)
        rejection = dialog.receive_request(request)
        if dialog.state is DialogState.TERMINATED:
            self.remove(dialog)
        return dialog, rejection
