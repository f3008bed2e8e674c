"""A SIP leg is a participant device of a call, held by the node that holds its dialog.

`InboundLeg`: a SIP peer calls an app user. The leg is the caller's device; call frames
for it become SIP responses, and the peer's CANCEL and BYE become hang-ups.

`OutboundLeg`: we INVITE a SIP callee, either because an app user called a `sip:` URI or
a trunk number (the leg is the callee's only device), or to fork a call to a registered
SIP phone (`fork=True`: one of the callee's devices; first answer wins). SIP responses
become controller actions, and call frames become CANCEL or BYE.

A leg changes a call only through the controller: as its device for what the peer did
(CANCEL, BYE, an answer, a decline), as the system for what no device did (a failure
status, an ACK that never came). It sees its node only through a `LegContext`.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import structlog

from sip.dialog import Dialog, DialogState, DialogTable
from sip.digest import DigestError, authorize
from sip.endpoint import FLOW_TRANSPORTS, ClientTransaction, SipEndpoint
from sip.message import (
    URI,
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    build_response,
    generate_tag,
    parse_uri,
)
from sip.transaction import Addr, RequestReceived
from voip.bus import Bus
from voip.calls import Action
from voip.controller import CallController, Caller, CallRejected
from voip.delivery_log import DeliveryLog
from voip.protocol import FrameType
from voip.sipcalls.config import SipConfig
from voip.stores import CallError, CallRefused
from voip.tasks import BackgroundTasks

log = structlog.get_logger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
SDP = "application/sdp"
# A callee device's SIP refusal that declines the whole call; anything else only fails
# the leg (or, for a fork, only drops that phone).
DECLINES = (486, 600, 603)
FORK_DECLINES = (600, 603)


def leg_device_for(sip_call_id: str) -> str:
    return "sip-" + hashlib.sha256(sip_call_id.encode()).hexdigest()[:12]


def caller_id(uri: URI) -> str:
    """An app-side user id for a SIP caller, e.g. 'sip:+15551234@pbx.example'."""
    if uri.scheme == "tel":
        raw = f"tel:{uri.user or ''}"
    else:
        raw = f"{uri.scheme}:{uri.user + '@' if uri.user else ''}{uri.host}"
    # Ids travel in Redis keys, channel names and app frames: keep the app's alphabet.
    return "".join(c if c.isalnum() or c in "._@+:-" else "_" for c in raw)[:128]


def uri_transport(uri: URI) -> str:
    """How `uri` is reached (RFC 3261 §26.2, §19.1.4): a `sips:` URI over TLS, a
    `;transport=` as given, else UDP."""
    if uri.scheme == "sips":
        return "TLS"
    return (uri.params.get("transport") or "udp").upper()


def our_contact(endpoint: SipEndpoint, transport: str, secure: bool) -> NameAddr:
    """Our Contact on `transport`; a `sips:` one in a dialog that a `sips:` URI asked for
    (§8.1.1.8), so the peer reaches us over TLS too."""
    contact = endpoint.contact("TLS" if secure else transport)
    if secure:
        contact = NameAddr(replace(contact.uri, scheme="sips", params={}))
    return contact


@dataclass(frozen=True, slots=True)
class LegContext:
    """What a leg needs from its node: the endpoint it sends through, the dialogs it
    adds and removes, the controller it acts through (it never changes a call itself),
    the bus it hears its frames on, the SIP settings, its background tasks, the node's
    batched timeline writer its notes go to, and how it leaves the gateway's tables when
    it ends."""

    endpoint: SipEndpoint
    dialogs: DialogTable
    calls: CallController
    bus: Bus
    config: SipConfig
    tasks: BackgroundTasks
    timeline: DeliveryLog
    forget: Callable[[Leg], None]


class Leg:
    """What both directions share: the SIP Call-ID, the app call, bus frames, teardown."""

    direction = ""

    def __init__(self, context: LegContext, *, sip_call_id: str, call_id: str, user: str, device: str) -> None:
        self.ctx = context
        self.sip_call_id = sip_call_id
        self.call_id = call_id
        self.user = user
        self.device = device
        self.dialog: Dialog | None = None
        self.finished = False
        # The peer's own TCP, TLS or WebSocket connection (its address, transport): requests to the
        # peer go over it while it is open, as a phone behind NAT, or one whose TLS
        # certificate we could not verify, can only be reached that way.
        self.flow: tuple[Addr, str] | None = None

    def note(self, **entry: Any) -> None:
        """Keep SIP facts on the call's timeline, next to the app's. Written with the node's
        next batch of timeline entries (voip/delivery_log.py): no SIP message waits on
        Redis for its note, and a busy node writes many calls' notes in one round trip."""
        calls = self.ctx.calls
        self.ctx.timeline.record(
            self.call_id,
            {
                "at": calls.clock.now_ms(),
                "event": "sip",
                "call_id_sip": self.sip_call_id,
                "leg": self.device,
                "direction": self.direction,
                **entry,
                "node": calls.node,
            },
        )

    async def act(self, action: Action, *, sdp: str | None = None) -> bool:
        """The leg's own device acts (e.g. the peer's CANCEL or BYE: a hang-up)."""
        try:
            await self.ctx.calls.act(action, self.user, self.device, self.call_id, sdp=sdp)
        except CallError as exc:
            log.info("sip.leg_action_refused", call_id=self.call_id, action=action.value, code=exc.code)
            return False
        return True

    async def act_as_system(self, action: Action, **note: Any) -> bool:
        """What no device did, e.g. a failure status from the peer or an ACK that never came."""
        try:
            await self.ctx.calls.act_as_system(action, self.call_id, note=note)
        except CallError as exc:
            log.info("sip.leg_action_refused", call_id=self.call_id, action=action.value, code=exc.code)
            return False
        return True

    def route(self) -> tuple[Addr | None, str | None]:
        """Where our next request to the peer goes: its open connection, else (None,
        None), the Contact's address and transport."""
        if self.flow is not None and self.ctx.endpoint.connected(self.flow[1], self.flow[0]):
            return self.flow
        return None, None

    async def send_bye(self) -> None:
        dialog = self.dialog
        if dialog is None or dialog.state is not DialogState.CONFIRMED:
            return
        bye = dialog.create_request("BYE")
        response = await self.ctx.endpoint.send_request(bye, *self.route())
        dialog.receive_response(bye, response)
        dialog.terminate()
        self.ctx.dialogs.remove(dialog)
        self.note(sent="BYE", status=response.status)

    async def flow_lost(self) -> None:
        """The peer's WebSocket closed: it can hear nothing more, so its part of the call
        ends as its own hang-up (a caller's cancel, a callee's hang-up once answered). A
        fork still ringing is left to its INVITE, which has failed with a 503."""
        if self.finished:
            return
        answered = self.dialog is not None and self.dialog.state is DialogState.CONFIRMED
        if isinstance(self, OutboundLeg) and not answered:
            return
        self.note(flow="closed")
        if isinstance(self, InboundLeg):
            # Its INVITE transaction ends here: the 487 cannot go out, and failing to send
            # ends the transaction rather than leaving it pending.
            self.reject(487)
        if self.dialog is not None:
            self.dialog.terminate()
            self.ctx.dialogs.remove(self.dialog)
        await self.act(Action.HANGUP)
        await self.finish()

    def spawn(self, work: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        return self.ctx.tasks.spawn(work, f"{self.direction}:{what}:{self.call_id}")

    async def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.dialog is not None and self.dialog.state is not DialogState.CONFIRMED:
            self.ctx.dialogs.remove(self.dialog)
        await self.detach()
        self.ctx.forget(self)

    async def detach(self) -> None:
        await self.ctx.bus.detach(self.user, self.device, self.deliver)

    async def deliver(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def in_dialog(self, event: RequestReceived, dialog: Dialog) -> None:
        method = event.request.method
        endpoint = self.ctx.endpoint
        if method == "BYE":
            endpoint.reply(event, 200)
            self.note(received="BYE")
            await self.act(Action.HANGUP)
            await self.finish()
        elif method == "INVITE":
            # A session refresh (RFC 4028) or hold: the media is the app's business, so
            # the session description stays the one agreed.
            ok = endpoint.reply(
                event, 200, headers=[("Contact", self.local_contact(event))], body=self.session_sdp(), content_type=SDP
            )
            dialog.response_sent(event.request, ok)
        elif method in ("OPTIONS", "UPDATE", "INFO"):
            endpoint.reply(event, 200)
        else:
            endpoint.not_implemented(event, ALLOW.split(", "))

    def local_contact(self, event: RequestReceived) -> NameAddr:
        secure = self.dialog is not None and self.dialog.secure
        return our_contact(self.ctx.endpoint, event.transport, secure)

    def session_sdp(self) -> bytes:
        return b""

    def on_ack(self) -> None:
        pass


class InboundLeg(Leg):
    direction = "inbound"

    def __init__(
        self, context: LegContext, event: RequestReceived, *, caller: str, callee: str, trusted: bool = False
    ) -> None:
        super().__init__(
            context,
            sip_call_id=event.request.call_id,
            call_id=str(uuid.uuid4()),
            user=caller,
            device=leg_device_for(event.request.call_id),
        )
        self.event = event
        self.invite = event.request
        self.callee = callee
        self.trusted = trusted
        self.to_tag = generate_tag()
        self.contact = our_contact(context.endpoint, event.transport, event.request.uri.scheme == "sips")
        self.answer_sdp = b""
        self.rang = False
        self.started = asyncio.Event()
        self.acked = asyncio.Event()
        if event.transport in FLOW_TRANSPORTS:
            self.flow = (event.source, event.transport)

    def session_sdp(self) -> bytes:
        return self.answer_sdp

    def pending(self) -> bool:
        return self.ctx.endpoint.server_pending(self.event.transaction)

    async def start(self) -> None:
        offer = self.invite.body.decode("utf-8", "replace") if self.invite.body else None
        await self.ctx.bus.attach(self.user, self.device, self.deliver)
        try:
            await self.ctx.calls.start_call(
                Caller(self.user, self.device),
                self.callee,
                self.call_id,
                sdp=offer,
                # A trusted network's PBX vouches for its callers' names; anyone else is
                # shown as the user it authenticated as.
                caller_name=self.invite.from_.display_name if self.trusted else None,
                source="sip",
            )
        except CallRejected:
            self.reject(403)  # the app's backend refused the call (the call hook)
            await self.finish()
            return
        except CallRefused as exc:
            if exc.reason == "callee_busy":
                self.reject(486)
            else:  # RFC 3261 §21.5.4: the callee can take calls again after Retry-After
                self.reject(503, headers=[("Retry-After", str(exc.retry_after))])
            await self.finish()
            return
        except CallError as exc:
            self.reject(403 if exc.code == "invalid_callee" else 500)
            await self.finish()
            return
        finally:
            self.started.set()
        src = self.event.source
        self.note(received="INVITE", sip_from=str(self.invite.from_.uri), source=f"{src[0]}:{src[1]}")

    async def deliver(self, frame: dict[str, Any]) -> None:
        if frame.get("call_id") != self.call_id or self.finished:
            return
        kind = frame["type"]
        if kind == FrameType.CALL_RINGING:
            self.ring()
        elif kind == FrameType.CALL_ANSWERED:
            await self.answer(frame.get("sdp"))
        elif kind == FrameType.CALL_DECLINED:
            # The callee's availability (voip/history.py Refusal): do-not-disturb is 480
            # Temporarily Unavailable, busy 486 Busy Here; a device's decline is 603.
            reason = frame.get("reason")
            self.end_with(480 if reason == "dnd" else 486 if frame.get("busy") or reason == "busy" else 603)
        elif kind == FrameType.CALL_MISSED:
            self.end_with(480)
        elif kind == FrameType.CALL_FAILED:
            # Before any device rang nobody could be reached; after, something broke.
            self.end_with(500 if self.rang else 480)
        elif kind == FrameType.CALL_ENDED:
            self.spawn(self.hang_up_peer(), "hang-up")

    def ring(self) -> None:
        if not self.pending() or self.rang:
            return
        self.rang = True
        ringing = build_response(self.invite, 180, to_tag=self.to_tag)
        ringing.headers.add("Contact", self.contact)
        self.keep_route(ringing)
        if self.dialog is None:
            self.dialog = Dialog.uas(self.invite, ringing, self.contact)
            self.ctx.dialogs.add(self.dialog)
        self.ctx.endpoint.send_response(ringing, self.event.transaction)

    async def answer(self, sdp: str | None) -> None:
        if not self.pending():
            # The peer's CANCEL crossed the app's answer: it has its 487, so end the call.
            self.spawn(self._end_after_cancel(), "end-after-cancel")
            return
        ok = build_response(self.invite, 200, to_tag=self.to_tag)
        ok.headers.add("Contact", self.contact)
        self.keep_route(ok)
        ok.headers.add("Allow", ALLOW)
        if sdp:
            self.answer_sdp = sdp.encode()
            ok.headers.add("Content-Type", SDP)
            ok.body = self.answer_sdp
        if self.dialog is None:
            self.dialog = Dialog.uas(self.invite, ok, self.contact)
            self.ctx.dialogs.add(self.dialog)
        else:
            self.dialog.response_sent(self.invite, ok)
        self.ctx.endpoint.send_response(ok, self.event.transaction)
        self.note(sent=200)

    async def _end_after_cancel(self) -> None:
        await self.act(Action.HANGUP)
        await self.finish()

    def keep_route(self, response: Response) -> None:
        """§12.1.1: a response that sets up the dialog carries the INVITE's Record-Route, so
        the proxies in front of us (Kamailio) stay on the peer's route set."""
        for route in self.invite.record_routes:
            response.headers.add("Record-Route", route)

    def reject(self, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        if not self.pending():
            return
        response = build_response(self.invite, status, to_tag=self.to_tag)
        for name, value in headers or []:
            response.headers.add(name, value)
        if self.dialog is not None:
            self.dialog.response_sent(self.invite, response)
        self.ctx.endpoint.send_response(response, self.event.transaction)

    def end_with(self, status: int) -> None:
        self.reject(status)
        self.note(sent=status)
        self.spawn(self.finish(), "finish")

    def on_ack(self) -> None:
        self.acked.set()

    async def hang_up_peer(self) -> None:
        # §15: the callee may not send BYE before the ACK, or before the 2xx gave up on it.
        try:
            await asyncio.wait_for(self.acked.wait(), 64 * self.ctx.endpoint.timers.t1)
        except TimeoutError:
            pass
        await self.send_bye()
        await self.finish()

    async def cancelled(self) -> None:
        """The peer's CANCEL: the endpoint has answered 200 and 487 already."""
        await self.started.wait()
        self.note(received="CANCEL")
        await self.act(Action.HANGUP)
        await self.finish()

    async def ack_timeout(self) -> None:
        """Our 2xx was never ACKed (§13.3.1.4): the call failed, and no device ended it.
        The leg is gone before the call ends, so it does not wait for that ACK again."""
        await self.send_bye()
        await self.finish()
        await self.act_as_system(Action.FAIL, why="no ACK for our 2xx")


class OutboundLeg(Leg):
    direction = "outbound"

    def __init__(
        self,
        context: LegContext,
        *,
        call_id: str,
        callee: str,
        device: str,
        target: URI,
        caller: str,
        sdp: str | None,
        fork: bool = False,
        route: list[NameAddr] | None = None,
    ) -> None:
        super().__init__(
            context,
            sip_call_id=f"{uuid.uuid4().hex}@{context.config.realm}",
            call_id=call_id,
            user=callee,
            device=device,
        )
        self.fork = fork
        if fork:
            self.direction = "fork"
        self.target = target
        self.offer = sdp.encode() if sdp else b""
        self.preloaded_route = route or []  # a registered phone's Path (RFC 3327)
        self.invite = self._build_invite(caller)
        self.tx: ClientTransaction | None = None
        self.rang = False
        # The 180's "ringing" goes to Redis in a task of its own; a 200 right behind it
        # must not overtake it, or the caller never hears call.ringing.
        self.ringing_reported: asyncio.Task[Any] | None = None
        self.giving_up = False

    def session_sdp(self) -> bytes:
        return self.offer

    def _build_invite(self, caller: str) -> Request:
        transport = uri_transport(self.target)
        headers = Headers()
        headers.add("From", NameAddr(self._from_uri(caller), params={"tag": generate_tag()}))
        headers.add("To", NameAddr(self.target))
        headers.add("Call-ID", self.sip_call_id)
        headers.add("CSeq", CSeq(1, "INVITE"))
        for hop in self.preloaded_route:
            headers.add("Route", hop)
        headers.add("Contact", our_contact(self.ctx.endpoint, transport, self.target.scheme == "sips"))
        headers.add("Allow", ALLOW)
        if self.offer:
            headers.add("Content-Type", SDP)
        return Request("INVITE", self.target, headers, self.offer)

    def _from_uri(self, caller: str) -> URI:
        if caller.startswith(("sip:", "sips:", "tel:")):
            try:
                return parse_uri(caller)
            except ParseError:
                pass
        # RFC 3261 user part: unreserved and user-unreserved characters, the rest escaped.
        return URI("sip", user=quote(caller, safe="-_.!~*'()&=+$,;?/"), host=self.ctx.config.realm)

    async def attach(self) -> None:
        # A fork hears its frames through the registrar's attachment for the phone.
        if not self.fork:
            await self.ctx.bus.attach(self.user, self.device, self.deliver)

    async def detach(self) -> None:
        if not self.fork:
            await super().detach()

    async def run(self) -> None:
        self.note(sent="INVITE", target=str(self.target))
        invite = self.invite
        config = self.ctx.config
        challenged = False
        while True:
            self.tx = self.ctx.endpoint.send_request(invite, *self.route(), on_provisional=self._provisional)
            if self.giving_up:
                self.tx.cancel()
            response = await self.tx
            if response.status in (401, 407) and not challenged and not self.giving_up and config.trunk_username:
                try:
                    invite = authorize(invite, response, config.trunk_username, config.trunk_password)
                except DigestError:
                    break
                self.invite, challenged = invite, True
                continue
            break
        await self._final(response)

    def _provisional(self, response: Response) -> None:
        if response.status in (180, 183) and not self.rang:
            self.rang = True
            self.ringing_reported = self.spawn(self._ringing(), "ringing")

    async def _ringing(self) -> None:
        try:
            await self.ctx.calls.ringing(self.user, self.device, self.call_id)
        except CallError:
            pass

    async def _final(self, response: Response) -> None:
        status = response.status
        if self.ringing_reported is not None:
            await asyncio.wait([self.ringing_reported])
        self.note(received=status, synthetic=bool(self.tx and self.tx.synthetic))
        if 200 <= status < 300:
            self.dialog = Dialog.uac(self.invite, response)
            self.ctx.dialogs.add(self.dialog)
            self.ctx.endpoint.send_ack(self.dialog.create_ack(self.invite), *self.route())
            sdp = response.body.decode("utf-8", "replace") if response.body else None
            if self.giving_up or not await self.act(Action.ANSWER, sdp=sdp):
                # Cancelled, or another device answered first, while this 2xx was on its way.
                await self.send_bye()
                await self.finish()
            return
        if self.giving_up:
            pass
        elif status in (FORK_DECLINES if self.fork else DECLINES):
            await self.act(Action.DECLINE)
        elif not self.fork:
            await self.act_as_system(Action.FAIL, sip_status=status, sip_reason=response.reason)
        await self.finish()

    async def deliver(self, frame: dict[str, Any]) -> None:
        if frame.get("call_id") != self.call_id or self.finished:
            return
        kind = frame["type"]
        if kind == "call.ended":
            self.spawn(self._hang_up(), "hang-up")
        elif kind in ("call.cancelled", "call.missed", "call.declined", "call.failed", "call.answered_elsewhere"):
            self.give_up()

    def give_up(self) -> None:
        self.giving_up = True
        if self.tx is not None and not self.tx.done:
            self.tx.cancel()

    async def _hang_up(self) -> None:
        await self.send_bye()
        await self.finish()
