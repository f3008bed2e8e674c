"""The SIP gateway: this node's transaction user. It turns SIP peers and registered SIP
phones into call participants through the same controller and bus as WebSocket devices.
See docs/sip-gateway.md."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import structlog

from sip.dialog import DialogTable
from sip.endpoint import FLOW_TRANSPORTS, WS_TRANSPORTS, SipEndpoint, TransactionUser
from sip.message import Request, Response, generate_tag, parse_name_addr, parse_uri
from sip.ratelimit import TokenBucketLimiter
from sip.transaction import Addr, RequestReceived, ResponseReceived
from voip import metrics
from voip.bus import Bus
from voip.calls import Action, CallState
from voip.controller import CallController
from voip.delivery_log import DeliveryLog
from voip.protocol import FrameType
from voip.sipcalls.config import SipConfig
from voip.sipcalls.legs import ALLOW, InboundLeg, Leg, LegContext, OutboundLeg, caller_id
from voip.sipcalls.registrar import Binding, Registrar
from voip.sipcalls.ringing import RINGING_OVER, RingingCall, RingingIndex
from voip.stores import CallError, CallRecord, Stores
from voip.tasks import BackgroundTasks

log = structlog.get_logger(__name__)

# Refused while the node drains (503 + Retry-After): the peer retries, on another node.
DRAIN_REFUSED = frozenset({"INVITE", "REGISTER"})
DRAIN_RETRY_AFTER = 5


class SipGateway(TransactionUser):
    def __init__(
        self,
        config: SipConfig,
        *,
        stores: Stores,
        bus: Bus,
        controller: CallController,
        node_id: str,
        timeline: DeliveryLog,
        max_devices: int = 10,
        serves_app: Callable[[str], bool] | None = None,
    ) -> None:
        """`timeline`: the node's batched timeline writer, where the legs' notes go.
        `serves_app`: whether pushes can reach an iOS bundle id (RFC 8599 `pn-param`);
        `None`: any."""
        self.config = config
        self.stores = stores
        self.controller = controller
        self.node_id = node_id
        self.endpoint = SipEndpoint(
            config.host,
            config.port,
            transports=config.transports,
            public_host=config.advertised_host,
            timers=config.timers,
            rate_limiter=TokenBucketLimiter(config.rate, config.burst),
            tls_server_context=config.tls_server_context(),
            tls_client_context=config.tls_client_context(),
            tls_port=config.tls_port if config.tls_enabled else None,
            # Strangers' requests are answered at their packet's source, once, until they
            # authenticate: no reflection, no amplification (docs/sip-gateway.md).
            trusted=config.is_trusted,
            ws_port=config.ws_port,
        )
        self.endpoint.on_message = metrics.count_sip_message
        self.dialogs = DialogTable()
        self.legs: dict[str, Leg] = {}  # SIP Call-ID -> leg
        self.forks: dict[tuple[str, str], OutboundLeg] = {}  # (call id, device) -> leg
        self.tasks = BackgroundTasks("sip")
        self.registrar = Registrar(
            config,
            self.endpoint,
            stores,
            bus,
            self.tasks,
            node_id=node_id,
            max_devices=max_devices,
            serves_app=serves_app,
            on_frame=self._phone_frame,
            on_bound=self._phone_bound,
        )
        self.ringing = RingingIndex(stores.sip)
        self.leg_context = LegContext(
            endpoint=self.endpoint,
            dialogs=self.dialogs,
            calls=controller,
            bus=bus,
            config=config,
            tasks=self.tasks,
            timeline=timeline,
            forget=self.forget,
        )
        # The node drains: new calls and registrations go to another node; dialogs go on.
        self.draining = False

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def tls_port(self) -> int | None:
        return self.endpoint.tls_port if self.config.tls_enabled else None

    async def start(self) -> None:
        await self.endpoint.start(self)
        log.info(
            "sip.started",
            host=self.config.host,
            port=self.endpoint.port,
            domain=self.config.realm,
            tls_port=self.endpoint.tls_port if self.config.tls_enabled else None,
        )

    async def stop(self) -> None:
        await self.registrar.close()
        for leg in list(self.legs.values()):
            await leg.detach()
        # The drain waited for SIP transactions already: what is left is cancelled, each
        # logged by name (task.abandoned), before the endpoint closes under it; then
        # whatever a last message started while the endpoint closed.
        await self.tasks.cancel()
        await self.endpoint.close()
        await self.tasks.cancel()

    def forget(self, leg: Leg) -> None:
        if self.legs.get(leg.sip_call_id) is leg:
            del self.legs[leg.sip_call_id]
        if isinstance(leg, OutboundLeg) and leg.fork:
            self.forks.pop((leg.call_id, leg.device), None)

    # The transaction user ---------------------------------------------------------------

    async def on_request(self, event: RequestReceived) -> None:
        request = event.request
        dialog, rejection = self.dialogs.match(request)
        if rejection is not None:
            if request.method != "ACK":
                self.endpoint.send_response(rejection, event.transaction)
            return
        leg = self.legs.get(request.call_id)
        if request.method == "ACK":
            if dialog is not None and leg is not None:
                leg.on_ack()
            return
        if dialog is not None:
            if leg is None:
                self.endpoint.reply(event, 481)
            else:
                # Inside a dialog that began authenticated (or from a trusted network).
                self.endpoint.vouch(event)
                await leg.in_dialog(event, dialog)
            return
        if self.draining and request.method in DRAIN_REFUSED:
            # Out of dialog only: BYEs and re-INVITEs of calls in progress are served above.
            self.endpoint.reply(event, 503, to_tag=generate_tag(), headers=[("Retry-After", str(DRAIN_RETRY_AFTER))])
            return
        match request.method:
            case "INVITE":
                await self._incoming(event)
            case "REGISTER":
                await self.registrar.handle(event)
            case "OPTIONS":
                self.endpoint.reply(
                    event,
                    200,
                    to_tag=generate_tag(),
                    headers=[("Allow", ALLOW + ", REGISTER"), ("Accept", "application/sdp")],
                )
            case "BYE":
                self.endpoint.reply(event, 481, to_tag=generate_tag())
            case _:
                self.endpoint.not_implemented(event, (ALLOW + ", REGISTER").split(", "))

    def on_cancel(self, event: RequestReceived, invite: Request) -> None:
        leg = self.legs.get(invite.call_id)
        if isinstance(leg, InboundLeg):
            self.tasks.spawn(leg.cancelled(), f"cancelled:{leg.call_id}")

    def on_ack_timeout(self, response: Response) -> None:
        leg = self.legs.get(response.call_id)
        if isinstance(leg, InboundLeg):
            self.tasks.spawn(leg.ack_timeout(), f"ack-timeout:{leg.call_id}")

    def on_stray_response(self, event: ResponseReceived) -> None:
        # A 2xx from a second fork beyond a proxy: we are in a call already, so ACK and BYE.
        response = event.response
        if 200 <= response.status < 300 and response.cseq.method == "INVITE":
            leg = self.legs.get(response.call_id)
            if isinstance(leg, OutboundLeg) and leg.dialog is not None and leg.dialog.remote_tag != response.to.tag:
                self.tasks.spawn(self._refuse_second_fork(leg.invite, response), f"second-fork:{leg.call_id}")

    def on_flow_closed(self, transport: str, peer: Addr) -> None:
        """A browser's WebSocket ended: its bindings go (nothing can reach its `*.invalid`
        Contact), and its calls in progress end, as a hang-up by that device."""
        if transport not in WS_TRANSPORTS:
            return
        self.tasks.spawn(self.registrar.flow_closed(transport, peer), f"flow-closed:{peer[0]}:{peer[1]}")
        for leg in list(self.legs.values()):
            if leg.flow == (peer, transport):
                self.tasks.spawn(leg.flow_lost(), f"flow-lost:{leg.call_id}")

    async def _refuse_second_fork(self, invite: Request, response: Response) -> None:
        from sip.dialog import Dialog

        dialog = Dialog.uac(invite, response)
        self.endpoint.send_ack(dialog.create_ack(invite))
        bye = dialog.create_request("BYE")
        await self.endpoint.send_request(bye)

    # SIP peer -> app user ---------------------------------------------------------------

    async def _incoming(self, event: RequestReceived) -> None:
        request = event.request
        if request.call_id in self.legs:
            self.endpoint.reply(event, 482, to_tag=generate_tag())
            return
        trusted = self.endpoint.trusts(event.source, event.transport)
        if trusted:
            # Trying at once: ringing an app can take a push and seconds.
            self.endpoint.reply(event, 100)
        uri = request.uri
        if not uri.is_sip or not uri.user or not self.config.is_local_domain(uri):
            self.endpoint.reply(event, 404, to_tag=generate_tag())
            return
        caller = caller_id(request.from_.uri)
        if not trusted:
            # A stranger hears nothing but this one answer until it authenticates.
            result = await self.registrar.authenticate(request, proxy=True)
            if not result.ok:
                log.info("sip.invite_challenged", source=event.source[0], reason=result.reason)
                self.registrar.challenge(event, result, proxy=True)
                return
            caller = f"sip:{result.username}@{self.config.realm}"
            self.endpoint.vouch(event)
            self.endpoint.reply(event, 100)
        callee = uri.user
        devices, online = await self.stores.devices.reachable(callee)
        if not devices and not online:
            self.endpoint.reply(event, 404, to_tag=generate_tag())
            return
        leg = InboundLeg(self.leg_context, event, caller=caller, callee=callee, trusted=trusted)
        self.legs[request.call_id] = leg
        await leg.start()

    # App user -> SIP callee (the controller's OutboundCallees) ----------------------------

    def leg_for(self, callee: str) -> str | None:
        return f"sip-leg-{uuid.uuid4().hex[:12]}" if self.config.is_sip_callee(callee) else None

    async def place(self, call: CallRecord, leg_device: str, sdp: str | None) -> None:
        target = self.config.target_uri(call.callee_user)
        if target is None:
            try:
                await self.controller.act_as_system(Action.FAIL, call.call_id, note={"why": "not a SIP URI"})
            except CallError:
                pass  # ended meanwhile
            return
        leg = OutboundLeg(
            self.leg_context,
            call_id=call.call_id,
            callee=call.callee_user,
            device=leg_device,
            target=target,
            caller=call.caller_user,
            sdp=sdp,
        )
        self.legs[leg.sip_call_id] = leg
        await leg.attach()
        self.tasks.spawn(leg.run(), f"outbound:{call.call_id}")

    # A registered phone, one of the callee's devices -------------------------------------

    async def _phone_frame(self, user: str, device: str, frame: dict[str, Any]) -> None:
        call_id = frame.get("call_id", "")
        kind = frame["type"]
        if kind != FrameType.CALL_INCOMING:
            if kind in RINGING_OVER:
                await self.ringing.remove(user, call_id)
            fork = self.forks.get((call_id, device))
            if fork is not None:
                await fork.deliver(frame)
            return
        call = RingingCall.from_frame(frame)
        binding = await self.registrar.binding(user, device)
        if binding is None and not await self.registrar.push_capable(user, device):
            await self.registrar.stop_listening(user, device)  # logged out or evicted meanwhile
            return
        # Indexed even when this phone rings now: the user's other phones may be asleep.
        await self.ringing.add(user, call)
        if binding is None or binding.node != self.node_id:
            return  # asleep (its push is on its way), or refreshed through another node
        await self._fork(user, device, binding, call)

    async def _phone_bound(self, user: str, device: str) -> None:
        """A phone (re-)registered through this node: ring it into the calls still ringing
        for its user, the ones a push woke it for."""
        for entry in await self.ringing.calls(user):
            call = await self.stores.calls.get(entry.call_id)
            if call is None or call.state is not CallState.RINGING:
                await self.ringing.remove(user, entry.call_id)
                continue
            binding = await self.registrar.binding(user, device)
            if binding is None or binding.node != self.node_id:
                return
            await self._fork(user, device, binding, entry)

    async def _fork(self, user: str, device: str, binding: Binding, call: RingingCall) -> None:
        if (call.call_id, device) in self.forks or not await self.ringing.claim(user, call, device):
            return  # INVITEd already, here or through another node
        leg = OutboundLeg(
            self.leg_context,
            call_id=call.call_id,
            callee=user,
            device=device,
            target=parse_uri(binding.contact),
            caller=call.caller,
            sdp=call.sdp,
            fork=True,
            route=[parse_name_addr(hop) for hop in binding.path],
        )
        if binding.transport in FLOW_TRANSPORTS and not binding.path:
            # The connection the phone registered over (RFC 5626 §5.3's flow, without its
            # keep-alives): used while it stays open, else the Contact is dialled (never
            # for a WebSocket: its binding ends with its socket).
            host, _, port = binding.source.rpartition(":")
            leg.flow = ((host, int(port)), binding.transport)
        self.legs[leg.sip_call_id] = leg
        self.forks[(call.call_id, device)] = leg
        self.tasks.spawn(leg.run(), f"fork:{call.call_id}:{device}")
