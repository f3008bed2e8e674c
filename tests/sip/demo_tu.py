"""A tiny UAS used by the endpoint and sipp tests: OPTIONS, INVITE/ACK/BYE,
REGISTER with a digest challenge."""

from __future__ import annotations

import asyncio
import time

from sip.dialog import Dialog, DialogTable
from sip.digest import DigestServer, compute_ha1
from sip.endpoint import SipEndpoint, TransactionUser
from sip.message import NameAddr, Request, Response, build_response, generate_tag
from sip.transaction import RequestReceived, TransactionTimeout

SDP = (
    b"v=0\r\no=demo 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
USERS = {"alice": "wonderland"}


class DemoTU(TransactionUser):
    """Answers INVITE after ``answer_after`` seconds (None: never, so that a
    CANCEL or a later ``answer()`` decides), like a device that rings."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        *,
        answer_after: float | None = 0.0,
        realm: str = "demo.test",
        algorithms: tuple[str, ...] = ("MD5",),
        challenge_invites: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.answer_after = answer_after
        self.dialogs = DialogTable()
        self.auth = DigestServer(realm, b"demo-secret", algorithms=algorithms)
        self.challenge_invites = challenge_invites
        self.pending: dict[str, tuple[RequestReceived, Response, Dialog]] = {}
        self.cancelled: list[Request] = []
        self.ack_timeouts: list[Response] = []
        self.server_timeouts: list[TransactionTimeout] = []
        self.registered: dict[str, str] = {}
        self.requests: list[str] = []
        self.byes = 0

    def lookup(self, username: str, realm: str, algorithm: str) -> str | None:
        password = USERS.get(username)
        return None if password is None else compute_ha1(username, realm, password, algorithm)

    async def on_request(self, event: RequestReceived) -> None:
        request = event.request
        self.requests.append(request.method)
        dialog, rejection = self.dialogs.match(request)
        if rejection is not None:
            self.endpoint.send_response(rejection, event.transaction)
            return
        method = request.method
        if method == "ACK":
            return
        if dialog is not None:
            await self._in_dialog(event, dialog)
        elif method == "OPTIONS":
            self.endpoint.reply(
                event,
                200,
                to_tag=generate_tag(),
                headers=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"), ("Accept", "application/sdp")],
            )
        elif method == "REGISTER":
            self._register(event)
        elif method == "INVITE":
            await self._invite(event)
        else:
            self.endpoint.not_implemented(event)

    def _register(self, event: RequestReceived) -> None:
        request = event.request
        result = self.auth.authenticate(request, self.lookup, time.time())
        if not result.ok:
            challenge = self.auth.challenge(request, time.time(), stale=result.stale, to_tag=generate_tag())
            self.endpoint.send_response(challenge, event.transaction)
            return
        contacts = request.contacts
        if contacts and result.username:
            self.registered[result.username] = str(contacts[0].uri)
        self.endpoint.reply(
            event, 200, to_tag=generate_tag(), headers=[("Contact", c) for c in contacts] + [("Expires", "300")]
        )

    async def _invite(self, event: RequestReceived) -> None:
        request = event.request
        if self.challenge_invites:
            result = self.auth.authenticate(request, self.lookup, time.time())
            if not result.ok:
                self.endpoint.send_response(
                    self.auth.challenge(request, time.time(), stale=result.stale, to_tag=generate_tag()),
                    event.transaction,
                )
                return
        contact = self.endpoint.contact(event.transport)
        ringing = build_response(request, 180, to_tag=generate_tag())
        ringing.headers.add("Contact", contact)
        dialog = Dialog.uas(request, ringing, contact)
        self.dialogs.add(dialog)
        self.endpoint.send_response(ringing, event.transaction)
        self.pending[request.call_id] = (event, ringing, dialog)
        if self.answer_after is None:
            return
        await asyncio.sleep(self.answer_after)
        self.answer(request.call_id)

    def answer(self, call_id: str) -> bool:
        """Send the 200 for a ringing call, if it is still pending."""
        entry = self.pending.pop(call_id, None)
        if entry is None:
            return False
        event, ringing, dialog = entry
        if not self.endpoint.server_pending(event.transaction):
            return False
        ok = build_response(event.request, 200, to_tag=ringing.to.tag)
        ok.headers.add("Contact", dialog.local_contact or self.endpoint.contact(event.transport))
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = SDP
        self.endpoint.send_response(ok, event.transaction)
        dialog.response_sent(event.request, ok)
        return True

    async def _in_dialog(self, event: RequestReceived, dialog: Dialog) -> None:
        method = event.request.method
        if method == "BYE":
            self.byes += 1
            self.endpoint.reply(event, 200)
        elif method == "INVITE":
            ok = self.endpoint.reply(
                event,
                200,
                headers=[("Contact", self.endpoint.contact(event.transport))],
                body=SDP,
                content_type="application/sdp",
            )
            dialog.response_sent(event.request, ok)
        else:
            self.endpoint.reply(event, 200)

    def on_cancel(self, event: RequestReceived, invite: Request) -> None:
        self.cancelled.append(invite)
        entry = self.pending.pop(invite.call_id, None)
        if entry is not None:
            self.dialogs.remove(entry[2])

    def on_ack_timeout(self, response: Response) -> None:
        self.ack_timeouts.append(response)

    def on_server_timeout(self, event: TransactionTimeout) -> None:
        self.server_timeouts.append(event)


def invite_request(target: NameAddr, local: NameAddr, call_id: str) -> Request:
    """An out-of-dialog INVITE from ``local`` to ``target`` with an SDP offer."""
    from sip.message import URI, CSeq, Headers

    headers = Headers()
    headers.add("From", NameAddr(URI("sip", user="caller", host="demo.test"), params={"tag": generate_tag()}))
    headers.add("To", NameAddr(target.uri))
    headers.add("Call-ID", call_id)
    headers.add("CSeq", CSeq(1, "INVITE"))
    headers.add("Contact", local)
    headers.add("Content-Type", "application/sdp")
    return Request("INVITE", target.uri, headers, SDP)
