"""A phone for the ghost-call experiment: the app of docs/ios-client.md on simulated time.

`voip/devicesim` is the same app on real time (its rings last real seconds); this one
lives on the experiment's clock, so that a push hours late costs no wall time. It does
what the guide says and records every call it showed:

- an invite push: report to CallKit at once (a known ended call: report and end, a known
  live one: nothing), set a timer at `expires_at`, ask `status_url`; no verdict (no
  network, a 503) is not a verdict: ask again, 1 s doubling to 10 s, until `expires_at`;
- a verdict `end_call`: end with its reason; ringing: connect the WebSocket, send
  `call.ringing`, let the user act;
- a cancellation or hang-up push: end the call, or report-then-end one never shown;
- the WebSocket's frames as the guide's table says; on every `hello` after a reconnect,
  ask the status of each call still shown;
- in the background, the socket is closed once no call is active.

Its I/O (HTTP, WebSocket) is real, against real nodes; its time is the world's."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from bench.ghost_population import DevicePlan
from bench.ghost_score import Ring
from voip.devicesim.callkit import cx_reason

if TYPE_CHECKING:
    from voip.clock import ManualClock

ENDING_FRAMES = frozenset({"call.cancelled", "call.declined", "call.missed", "call.failed", "call.ended"})
RETRY_FIRST, RETRY_CAP = 1.0, 10.0


class World(Protocol):
    """What a phone needs from the experiment around it."""

    clock: ManualClock
    status: str  # "ok", "slow", "unreachable"
    http: httpx.AsyncClient
    rng: random.Random

    def now(self) -> float: ...

    def sim_of_ms(self, ms: int) -> float: ...

    def after(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None: ...

    def base_url(self) -> str: ...

    def bearer(self, user: str) -> str: ...

    def touch(self) -> None: ...

    def frame_read(self, device_id: str) -> None: ...

    def socket_ended(self, device_id: str) -> None: ...

    def answered(self, call_id: str, device_id: str) -> None: ...

    def declined(self, call_id: str, device_id: str) -> None: ...


@dataclass(slots=True)
class Shown:
    call_id: str
    phase: str  # ringing, connected, ended
    start: float
    expires_at: float
    status_url: str = ""
    end: float | None = None
    how: str = "open"
    reason: str | None = None
    worst_rtt: float = 0.0
    acted: bool = False
    placeholder: bool = False
    cut_off: bool = False
    """The phone had no network while it showed the call (asleep at wake, half-open):
    nothing could reach it, so its bound is `expires_at`."""
    socket_lost: float | None = None
    """When the service cut the phone's socket (a node killed) while the call rang: an
    ending while it reconnects reaches it only at its `hello`."""


class App:
    def __init__(self, world: World, user: str, plan: DevicePlan) -> None:
        self.world = world
        self.user = user
        self.plan = plan
        self.device_id = plan.device_id
        self.call_id = ""
        """The call this phone's user receives (one call per callee in the experiment)."""
        self.calls: dict[str, Shown] = {}
        self.socket: ClientConnection | None = None
        self.deaf = False
        self.net_down: set[str] = set()
        """Why the phone has no network now (asleep, half-open): HTTP and sockets fail."""
        self.net_ok_at = 0.0
        self.foreground = plan.mode == "foreground"
        self.rng = random.Random(plan.seed)
        self._seq = 0
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._reconnecting = False

    # ---- the record --------------------------------------------------------------

    def rings(self) -> list[Ring]:
        return [
            Ring(
                call_id=shown.call_id,
                device_id=self.device_id,
                start=shown.start,
                end=shown.end,
                how=shown.how,
                reason=shown.reason,
                bound=max(shown.worst_rtt, self.plan.rtt),
                expires_at=shown.expires_at,
                status_reachable=self.world.status != "unreachable" and not shown.cut_off,
                socket_lost=shown.socket_lost,
            )
            for shown in self.calls.values()
            if not shown.placeholder
        ]

    def knows_outcome(self, call_id: str) -> bool:
        shown = self.calls.get(call_id)
        return shown is not None and shown.phase == "ended"

    @property
    def has_network(self) -> bool:
        return not self.net_down and self.world.now() >= self.net_ok_at

    # ---- CallKit -----------------------------------------------------------------

    def _report(self, call_id: str, expires_at: float, status_url: str) -> Shown:
        shown = Shown(call_id, "ringing", self.world.now(), expires_at, status_url)
        shown.cut_off = not self.has_network
        self.calls[call_id] = shown
        self.world.after(max(0.0, expires_at - self.world.now()), lambda: self._deadline(call_id))
        return shown

    def _placeholder(self, call_id: str) -> None:
        if call_id not in self.calls:
            now = self.world.now()
            self.calls[call_id] = Shown(call_id, "ended", now, now, end=now, how="placeholder", placeholder=True)

    def _end(self, call_id: str, how: str, reason: str | None) -> None:
        shown = self.calls.get(call_id)
        if shown is None or shown.phase == "ended":
            return
        shown.phase, shown.end, shown.how, shown.reason = "ended", self.world.now(), how, reason
        self.world.touch()
        if not self.foreground and not any(s.phase != "ended" for s in self.calls.values()):
            self.world.after(0, self.close_socket)

    async def _deadline(self, call_id: str) -> None:
        shown = self.calls.get(call_id)
        if shown is not None and shown.phase == "ringing":
            self._end(call_id, "deadline", "unanswered")

    # ---- pushes ------------------------------------------------------------------

    def on_push(self, payload: dict[str, Any]) -> None:
        kind, call_id = payload.get("type"), str(payload.get("call_id"))
        if kind == "call.incoming":
            known = self.calls.get(call_id)
            if known is not None:
                return  # live: CallKit dedupes; ended: report-then-end under a fresh UUID
            expires_at = self.world.sim_of_ms(int(payload.get("expires_at", 0)))
            self._report(call_id, expires_at, str(payload["status_url"]))
            self.world.after(0, lambda: self._ask(call_id, RETRY_FIRST))
        elif kind in ("call.cancelled", "call.ended"):
            shown = self.calls.get(call_id)
            if shown is not None and shown.phase != "ended":
                self._end(call_id, "push", cx_reason(payload.get("reason")).value)
            else:
                self._placeholder(call_id)

    # ---- the status check --------------------------------------------------------

    async def _ask(self, call_id: str, wait: float) -> None:
        shown = self.calls.get(call_id)
        if shown is None or shown.phase != "ringing":
            return
        verdict: dict[str, Any] | None = None
        retry_after = 0.0
        rtt = self.plan.rtt
        if self.has_network and self.world.status != "unreachable":
            if self.world.status == "slow":
                rtt += self.rng.uniform(2, 20)
            verdict, retry_after = await self._get_status(call_id, shown.status_url)
        if verdict is None:
            now = self.world.now()
            if now >= shown.expires_at:
                return  # the deadline timer ends it
            pause = min(max(wait, retry_after), shown.expires_at - now)
            self.world.after(pause, lambda: self._ask(call_id, min(wait * 2, RETRY_CAP)))
            return
        shown.worst_rtt = max(shown.worst_rtt, rtt)
        self.world.after(rtt, lambda: self._verdict(call_id, verdict))

    async def _get_status(self, call_id: str, status_url: str) -> tuple[dict[str, Any] | None, float]:
        if status_url:
            path, headers = "/v1/" + status_url.split("/v1/", 1)[1], {}
        else:
            path = f"/v1/calls/{call_id}/status?device_id={self.device_id}"
            headers = {"Authorization": f"Bearer {self.world.bearer(self.user)}"}
        # As config/haproxy/haproxy.cfg's balancer does (`retry-on conn-failure
        # empty-response`, `option redispatch`): a node killed under the request, and
        # the GET goes once more, to a node that is up.
        body: Any = None
        for attempt in range(2):
            try:
                response = await self.world.http.get(f"{self.world.base_url()}{path}", headers=headers)
                body = response.json()
                break
            except httpx.TransportError:
                if attempt:
                    return None, 0.0
            except (httpx.HTTPError, ValueError):
                return None, 0.0
        if not isinstance(body, dict) or "end_call" not in body:
            retry = body.get("retry_after") if isinstance(body, dict) else None
            return None, float(retry) if isinstance(retry, int | float) else 0.0
        return body, 0.0

    async def _verdict(self, call_id: str, verdict: dict[str, Any]) -> None:
        shown = self.calls.get(call_id)
        if shown is None or shown.phase != "ringing":
            return
        if verdict["end_call"]:
            self._end(call_id, "verdict", cx_reason(verdict.get("reason")).value)
            return
        await self._show(call_id)

    # ---- ringing and the user ----------------------------------------------------

    async def _show(self, call_id: str) -> None:
        if not await self.open_socket():
            return
        shown = self.calls.get(call_id)
        if shown is None or shown.phase != "ringing":
            return
        reply = await self._request({"type": "call.ringing", "call_id": call_id})
        if reply.get("type") == "error" and reply.get("end_call"):
            # Refused: the call is over for this device; the refusal says why.
            self._end(call_id, "frame", cx_reason(reply.get("reason")).value)
            return
        if self.plan.action != "ignore" and not shown.acted:
            shown.acted = True
            self.world.after(self.plan.act_after, lambda: self._act(call_id))

    async def _act(self, call_id: str) -> None:
        shown = self.calls.get(call_id)
        if shown is None or shown.phase != "ringing" or not self.has_network:
            return
        if self.plan.action == "decline":
            shown.phase, shown.end, shown.how, shown.reason = "ended", self.world.now(), "user", None
            reply = await self._request({"type": "call.decline", "call_id": call_id})
            if reply.get("type") == "ack":
                self.world.declined(call_id, self.device_id)
            return
        reply = await self._request({"type": "call.answer", "call_id": call_id})
        if reply.get("type") == "ack":
            shown.phase, shown.end, shown.how = "connected", self.world.now(), "answered"
            self.world.answered(call_id, self.device_id)
        elif shown.phase == "ringing" and reply.get("end_call"):
            self._end(call_id, "frame", cx_reason(reply.get("reason")).value)
        elif shown.phase == "ringing":
            self._end(call_id, "answer-failed", "failed")

    # ---- the WebSocket -----------------------------------------------------------

    async def open_socket(self) -> bool:
        if self.socket is not None:
            return True
        if not self.has_network:
            return False
        url = self.world.base_url().replace("http", "ws", 1) + f"/v1/ws?device_id={self.device_id}"
        try:
            socket = await websockets.connect(
                url, additional_headers={"Authorization": f"Bearer {self.world.bearer(self.user)}"}
            )
            hello = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
        except (OSError, websockets.WebSocketException, TimeoutError):
            return False
        if hello.get("type") != "hello":
            await socket.close()
            return False
        self.socket, self.deaf = socket, False
        self._reader = asyncio.create_task(self._read(socket))
        return True

    async def close_socket(self) -> None:
        socket, self.socket = self.socket, None
        if socket is not None and not self.foreground:
            self._closing = True
            with contextlib.suppress(Exception):
                await socket.close()
            self._closing = False
        elif socket is not None:
            self.socket = socket

    def drop_network(self) -> None:
        """Half-open: the network is gone under the socket; the server still sees it open."""
        self.deaf = True
        self.net_down.add("half-open")
        for shown in self.calls.values():
            if shown.phase == "ringing":
                shown.cut_off = True

    async def regain_network(self) -> None:
        self.net_down.discard("half-open")
        socket, self.socket = self.socket, None
        if socket is not None:
            socket.transport.abort()  # the app learns its old socket is dead
        self.deaf = False
        await self._reconnect()

    async def _reconnect(self) -> None:
        self._reconnecting = False
        if not (self.foreground or any(s.phase != "ended" for s in self.calls.values())):
            return
        if not await self.open_socket():
            if self.has_network:
                self._reconnecting = True
                self.world.after(1.0, self._reconnect)
            return
        # hello: ask the status of every call still shown.
        for shown in list(self.calls.values()):
            if shown.phase == "ringing":
                await self._ask(shown.call_id, RETRY_FIRST)

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        socket = self.socket
        if socket is None or self.deaf:
            return {"type": "error", "code": "no_socket"}
        self._seq += 1
        request_id = f"{self.device_id}-{self._seq}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            await socket.send(orjson.dumps({**frame, "id": request_id}).decode())
            return await asyncio.wait_for(future, 5)
        except (websockets.ConnectionClosed, TimeoutError):
            return {"type": "error", "code": "no_reply"}
        finally:
            self._replies.pop(request_id, None)

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for message in socket:
                self.world.touch()
                frame = orjson.loads(message)
                if "id" not in frame:
                    self.world.frame_read(self.device_id)
                if self.deaf:
                    continue
                self._on_frame(frame)
        except websockets.ConnectionClosed:
            pass
        self.world.socket_ended(self.device_id)
        if socket is self.socket:
            self.socket = None
            self.world.touch()
            if not self._closing and not self.deaf:
                for shown in self.calls.values():
                    if shown.phase == "ringing":
                        shown.socket_lost = self.world.now()
                self.world.after(self.plan.reconnect_after, self._reconnect)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        future = self._replies.get(str(frame.get("id")))
        if future is not None and not future.done():
            future.set_result(frame)
            return
        kind, call_id = frame.get("type"), frame.get("call_id")
        if not isinstance(call_id, str):
            return
        shown = self.calls.get(call_id)
        if kind == "call.incoming":
            if shown is None:
                deadline = self.world.sim_of_ms(int(frame.get("ring_deadline", 0)))
                self._report(call_id, deadline, "")
                self.world.after(0, lambda: self._show(call_id))
        elif kind == "call.answered_elsewhere":
            self._end(call_id, "frame", "answeredElsewhere")
        elif kind in ENDING_FRAMES and shown is not None:
            if shown.phase == "connected":
                shown.phase = "ended"
            else:
                self._end(call_id, "frame", cx_reason(frame.get("reason")).value)
