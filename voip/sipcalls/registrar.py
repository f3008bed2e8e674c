"""REGISTER (RFC 3261 §10) with digest, bindings in Redis, and RFC 8599 push parameters.

A binding makes the SIP phone a device of its user: it is present (store presence, for
as long as the binding lasts) so it counts as a call target, and the node that took the
REGISTER listens on the bus as that device, so a `call.incoming` for the user forks an
INVITE to the phone's Contact. A Contact with `pn-provider=apns|apns.dev`, `pn-prid` and
`pn-param=<team>.<bundle>.voip` also becomes a device record with a VoIP token, so the
push notifier can wake the app after the binding has lapsed.

    {u:<user>}:sip_bindings   hash   device_id -> JSON Binding
    {u:<user>}:sip_ha1        hash   "<realm>|<algorithm>" -> HA1 (passwords never stored)
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import structlog

from sip.digest import AuthResult, DigestServer, compute_ha1
from sip.endpoint import WS_TRANSPORTS, SipEndpoint
from sip.message import NameAddr, Request, generate_tag
from sip.transaction import Addr, RequestReceived
from voip.bus import Bus
from voip.clock import now_ms
from voip.devices import ApnsEnvironment, DeviceRecord, Registration, SipRegistration, register
from voip.sipcalls.config import SipConfig
from voip.stores import Stores
from voip.tasks import BackgroundTasks

log = structlog.get_logger(__name__)

ALGORITHMS = ("SHA-256", "MD5")
HEX_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2}){32,100}$")
FrameHandler = Callable[[str, str, dict[str, Any]], Awaitable[None]]
BoundHandler = Callable[[str, str], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Binding:
    device_id: str
    contact: str
    expires_at: int  # ms
    node: str
    transport: str
    source: str
    call_id: str
    cseq: int
    # RFC 3327: the proxies the REGISTER came through, the route of every request to the phone.
    path: tuple[str, ...] = ()

    @property
    def live(self) -> bool:
        return self.expires_at > now_ms()


@dataclass(frozen=True, slots=True)
class PushTarget:
    """RFC 8599 Contact parameters for APNs."""

    voip_token: str
    apns_environment: ApnsEnvironment
    bundle_id: str
    team_id: str


def push_target(contact: NameAddr) -> PushTarget | None:
    params = contact.uri.params
    provider = (params.get("pn-provider") or "").lower()
    prid, param = params.get("pn-prid") or "", params.get("pn-param") or ""
    if provider not in ("apns", "apns.dev") or not prid or not param:
        return None
    # Linphone-style "<token>:voip&<token>:remote": keep the VoIP token.
    tokens = [t.split(":", 1) for t in prid.split("&")]
    token = next((t[0] for t in tokens if len(t) == 2 and t[1] == "voip"), tokens[0][0])
    parts = param.split(".")
    if not HEX_TOKEN.match(token) or len(parts) < 3:
        return None
    team, bundle = parts[0], ".".join(parts[1:-1] if parts[-1] in ("voip", "apns") else parts[1:])
    return PushTarget(token.lower(), "sandbox" if provider == "apns.dev" else "production", bundle, team)


def binding_device_id(user: str, contact: NameAddr) -> str:
    """Stable per phone: the RFC 5626 instance id when it sends one, else the Contact URI
    without its parameters (they change with every push token)."""
    instance = contact.params.get("+sip.instance")
    uri = contact.uri
    key = instance or f"{uri.scheme}:{uri.user or ''}@{uri.host}:{uri.port or ''}"
    return "sip-reg-" + hashlib.sha256(f"{user}\0{key}".encode()).hexdigest()[:12]


class Registrar:
    def __init__(
        self,
        config: SipConfig,
        endpoint: SipEndpoint,
        stores: Stores,
        bus: Bus,
        tasks: BackgroundTasks,
        *,
        node_id: str,
        max_devices: int,
        on_frame: FrameHandler,
        on_bound: BoundHandler,
        serves_app: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.sip = stores.sip
        self.devices = stores.devices
        self.presence = stores.presence
        self.bus = bus
        self.node_id = node_id
        self.max_devices = max_devices
        # The iOS apps pushes can reach (APNS_APPS); None: any (the bundled simulator).
        self.serves_app = serves_app
        self.on_frame = on_frame
        self.on_bound = on_bound
        self.digest = DigestServer(
            config.realm,
            config.digest_secret,
            algorithms=config.digest_algorithms,
            nonce_ttl=config.nonce_ttl,
        )
        self.nonce_counts = stores.nonces
        # (user, device) -> (deliver, expiry timer) for bindings held on this node
        self._attached: dict[
            tuple[str, str], tuple[Callable[[dict[str, Any]], Awaitable[None]], asyncio.TimerHandle]
        ] = {}
        self.tasks = tasks
        # WebSocket flow -> the (user, device) bindings registered over it: they end with it.
        self._flows: dict[tuple[str, Addr], set[tuple[str, str]]] = {}

    # Credentials ------------------------------------------------------------------------

    async def store_password(self, user: str, password: str) -> None:
        """Keep only the HA1 of each algorithm we offer, for this realm."""
        realm = self.config.realm
        await self.sip.put_ha1s(user, {f"{realm}|{a}": compute_ha1(user, realm, password, a) for a in ALGORITHMS})

    async def _ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        if (password := self.config.accounts.get(user)) is not None:
            return compute_ha1(user, realm, password, algorithm)
        raw = await self.sip.ha1(user, realm, algorithm)
        return _text(raw) if raw else None

    async def authenticate(self, request: Request, *, proxy: bool = False) -> AuthResult:
        """Digest credentials checked, then their `(nonce, nc)` consumed cluster-wide: a
        replayed header, from any socket and through any node, is re-challenged stale."""
        credentials = self.digest.credentials(request, proxy=proxy)
        if credentials is None:
            return AuthResult(False, reason="no credentials")
        algorithm = credentials.algorithm.upper().removesuffix("-SESS")
        ha1 = await self._ha1(credentials.username, credentials.realm, algorithm)
        if ha1 is None:
            return AuthResult(False, credentials.username, reason="unknown user")
        result = self.digest.verify(request, credentials, ha1, time.time())
        if not result.ok:
            return result
        # qop is required (DigestServer.qop): a verified result always names its count.
        if (
            result.nonce is None
            or result.nc is None
            or not await self.nonce_counts.consume(result.nonce, result.nc, self.digest.count_ttl)
        ):
            return AuthResult(False, result.username, stale=True, reason="nonce count replayed")
        return result

    def challenge(self, event: RequestReceived, result: AuthResult, *, proxy: bool = False) -> None:
        now = time.time()
        response = self.digest.challenge(event.request, now, stale=result.stale, proxy=proxy, to_tag=generate_tag())
        budget = self.endpoint.answer_budget(event)
        if budget is not None and len(response.serialise()) > budget:
            # A stranger's small datagram: the first algorithm alone, so that the answer
            # stays within twice the request's size (or is not sent at all).
            response = self.digest.challenge(
                event.request,
                now,
                stale=result.stale,
                proxy=proxy,
                to_tag=response.to.tag,
                algorithms=self.digest.algorithms[:1],
            )
        self.endpoint.send_response(response, event.transaction)

    # Bindings ---------------------------------------------------------------------------

    async def bindings(self, user: str) -> dict[str, Binding]:
        raw = await self.sip.bindings(user)
        found = {_text(k): Binding(**orjson.loads(v)) for k, v in raw.items()}
        return {device: b for device, b in found.items() if b.live}

    async def binding(self, user: str, device_id: str) -> Binding | None:
        raw = await self.sip.binding(user, device_id)
        found = Binding(**orjson.loads(raw)) if raw else None
        return found if found is not None and found.live else None

    async def handle(self, event: RequestReceived) -> None:
        request = event.request
        aor = request.to.uri
        if not aor.user or not self.config.is_local_domain(aor):
            self.endpoint.reply(event, 404, "Not Our Domain", to_tag=generate_tag())
            return
        result = await self.authenticate(request)
        if not result.ok:
            log.info("sip.register_challenged", user=aor.user, source=event.source[0], reason=result.reason)
            self.challenge(event, result)
            return
        if result.username != aor.user:
            self.endpoint.reply(event, 403, "Wrong User For AOR", to_tag=generate_tag())
            return
        self.endpoint.vouch(event)
        user = aor.user
        contacts = request.contacts
        default = _int(request.headers.get("Expires"), self.config.max_expires)
        if any(c.wildcard for c in contacts):
            if default != 0 or len(contacts) != 1:
                self.endpoint.reply(event, 400, "Wildcard Needs Expires 0", to_tag=generate_tag())
                return
            for device_id in await self.bindings(user):
                await self._remove(user, device_id)
            contacts = []
        bound: list[str] = []
        for contact in contacts:
            expires = min(_int(contact.params.get("expires"), default), self.config.max_expires)
            if 0 < expires < self.config.min_expires:
                self.endpoint.reply(
                    event, 423, to_tag=generate_tag(), headers=[("Min-Expires", str(self.config.min_expires))]
                )
                return
            push = push_target(contact) if expires and self.serves_app is not None else None
            if push is not None and self.serves_app is not None and not self.serves_app(push.bundle_id):
                # RFC 8599 §5: a push service the registrar cannot use. Like PUT /v1/devices'
                # 422 unknown_app: a phone registered for an app with no key would never ring.
                log.info("sip.register_unknown_app", user=user, bundle_id=push.bundle_id)
                self.endpoint.reply(event, 555, "Push Notification Service Not Supported", to_tag=generate_tag())
                return
        for contact in contacts:
            expires = min(_int(contact.params.get("expires"), default), self.config.max_expires)
            device_id = binding_device_id(user, contact)
            if expires == 0:
                await self._remove(user, device_id)
            else:
                await self._bind(user, device_id, contact, expires, event)
                bound.append(device_id)
        current = await self.bindings(user)
        now = now_ms()
        self.endpoint.reply(
            event,
            200,
            to_tag=generate_tag(),
            headers=[
                *(
                    ("Contact", f"<{b.contact}>;expires={max(0, (b.expires_at - now) // 1000)}")
                    for b in current.values()
                ),
                *(("Path", path) for path in request.paths),  # RFC 3327 §5.3: the Path we stored
            ],
        )
        # After the 200: a phone woken by a push hears its REGISTER answered, then the call.
        for device_id in bound:
            self.tasks.spawn(self.on_bound(user, device_id), f"registered:{device_id}")

    async def _bind(self, user: str, device_id: str, contact: NameAddr, expires: int, event: RequestReceived) -> None:
        request = event.request
        binding = Binding(
            device_id=device_id,
            contact=str(contact.uri),
            expires_at=now_ms() + expires * 1000,
            node=self.node_id,
            transport=event.transport,
            source=f"{event.source[0]}:{event.source[1]}",
            call_id=request.call_id,
            cseq=request.cseq.seq,
            path=tuple(str(p) for p in request.paths),
        )
        # No binding outlives max_expires, so neither does the hash once unrefreshed.
        await self.sip.put_binding(user, device_id, orjson.dumps(asdict(binding)), self.config.max_expires + 60)
        await self.presence.set(user, device_id, self.node_id, expires * 1000)
        if (push := push_target(contact)) is not None:
            await self._put_push_device(user, device_id, push, binding)
        await self._attach(user, device_id, expires)
        if event.transport in WS_TRANSPORTS:
            self._flows.setdefault((event.transport, event.source), set()).add((user, device_id))
        log.info("sip.registered", user=user, device=device_id, expires=expires, push=push is not None)

    async def _put_push_device(self, user: str, device_id: str, push: PushTarget, binding: Binding) -> None:
        previous = await self.devices.get(user, device_id)
        record = register(
            DeviceRecord.from_stored(previous) if previous else None,
            Registration(
                push.voip_token,
                push.apns_environment,
                push.bundle_id,
                sip=SipRegistration(binding.contact, binding.expires_at, push.team_id),
            ),
            now_ms(),
        )
        await self.devices.put(user, device_id, record.stored(), self.max_devices)

    async def _remove(self, user: str, device_id: str) -> None:
        await self.sip.delete_binding(user, device_id)
        await self.presence.clear(user, device_id, self.node_id)
        device = await self.devices.get(user, device_id)
        if device is not None and "sip" in device:
            # Unregistering is how a SIP client logs out: no more pushes either.
            await self.devices.delete(user, device_id)
        await self._detach(user, device_id)
        log.info("sip.unregistered", user=user, device=device_id)

    # This node listens for the phone while its binding lasts -----------------------------

    async def _attach(self, user: str, device_id: str, expires: int) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(
            expires, lambda: self.tasks.spawn(self._expire(user, device_id), f"binding-expired:{device_id}")
        )
        held = self._attached.get((user, device_id))
        if held is not None:
            held[1].cancel()
            self._attached[(user, device_id)] = (held[0], timer)
            return

        async def deliver(frame: dict[str, Any]) -> None:
            await self.on_frame(user, device_id, frame)

        self._attached[(user, device_id)] = (deliver, timer)
        await self.bus.attach(user, device_id, deliver)

    async def _detach(self, user: str, device_id: str) -> None:
        held = self._attached.pop((user, device_id), None)
        if held is not None:
            held[1].cancel()
            await self.bus.detach(user, device_id, held[0])

    async def _expire(self, user: str, device_id: str) -> None:
        binding = await self.binding(user, device_id)
        if binding is not None:
            if binding.node != self.node_id:  # refreshed through another node, which listens now
                await self._detach(user, device_id)
            return
        await self.sip.delete_binding(user, device_id)
        # The device record of a push-capable phone stays: a push may wake it to re-register.
        # This node keeps listening for it meanwhile, so the user's ringing calls are indexed
        # for the REGISTER that follows the push (gateway.py, ringing.py).
        if not await self.push_capable(user, device_id):
            await self._detach(user, device_id)

    async def flow_closed(self, transport: str, peer: Addr) -> None:
        """A WebSocket ended: each binding still registered over it goes, as an expiry
        would take it (a binding refreshed over a newer socket, or through another node,
        stays). RFC 5626 §5.3: a flow that fails is not used again."""
        source = f"{peer[0]}:{peer[1]}"
        for user, device_id in self._flows.pop((transport, peer), set()):
            binding = await self.binding(user, device_id)
            if binding is None or binding.node != self.node_id or binding.source != source:
                continue
            await self.sip.delete_binding(user, device_id)
            await self.presence.clear(user, device_id, self.node_id)
            if not await self.push_capable(user, device_id):
                await self._detach(user, device_id)
            log.info("sip.flow_closed", user=user, device=device_id, transport=transport)

    async def push_capable(self, user: str, device_id: str) -> bool:
        device = await self.devices.get(user, device_id)
        return device is not None and "sip" in device and bool(device.get("voip_token"))

    async def stop_listening(self, user: str, device_id: str) -> None:
        await self._detach(user, device_id)

    async def close(self) -> None:
        """Stop listening for this node's phones; their tasks are the gateway's to end."""
        for user, device_id in list(self._attached):
            await self._detach(user, device_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: object, default: int) -> int:
    try:
        return max(0, int(str(value))) if value is not None else default
    except ValueError:
        return default
