"""One simulated iPhone running the calling app: PushKit, CallKit, the status check and
the WebSocket, doing what docs/ios-client.md says the real app must do."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from apnsim import Delivery, Device
from voip.devicesim.backend import Backend
from voip.devicesim.callkit import CXCallEndedReason, ReportedCall, cx_reason
from voip.devicesim.events import Event, EventLog
from voip.push.payloads import CANCELLED, ENDED, INCOMING

# Frames that end a call on this device, whatever their reason field says.
ENDING_FRAMES = frozenset({"call.cancelled", "call.declined", "call.missed", "call.failed", "call.ended"})
SHOWN_FIELDS = ("id", "state", "reason", "device_id", "code", "message")


@dataclass(frozen=True, slots=True)
class StatusRetry:
    """How the app asks `status_url` again when it got no verdict (no network, a 503):
    `first` seconds, doubling, at most `cap`; a 503's `retry_after` when longer."""

    first: float = 1.0
    cap: float = 10.0


@dataclass(frozen=True, slots=True)
class Policy:
    """What the user does when the phone rings."""

    action: Literal["answer", "decline", "ignore"] = "ignore"
    after: float = 0.0

    @classmethod
    def answer(cls, after: float = 1.0) -> Policy:
        return cls("answer", after)

    @classmethod
    def decline(cls, after: float = 0.5) -> Policy:
        return cls("decline", after)

    @classmethod
    def ignore(cls) -> Policy:
        return cls("ignore")


class CallRefused(Exception):
    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame


MustReport = Callable[[Delivery], bool]


def always_report(delivery: Delivery) -> bool:
    """Before iOS 26.4 every VoIP push must be reported to CallKit."""
    return True


class Phone:
    platform = "ios"
    unreported_why = "mustReport is false"
    """Why a push was not shown at once (the event log's words)."""

    def __init__(
        self,
        backend: Backend,
        user: str,
        device_id: str,
        *,
        policy: Policy | None = None,
        log: EventLog | None = None,
        must_report: MustReport = always_report,
        status_retry: StatusRetry | None = None,
        name: str | None = None,
    ) -> None:
        self.backend = backend
        # The user's display name as the app's backend gives it: the token's claim `name`,
        # what callees are shown (a client's own caller_name is not trusted by default).
        self.name = name
        self.user = user
        self.device_id = device_id
        self.policy = policy or Policy.ignore()
        self.log = log or EventLog()
        self.must_report = must_report
        self.status_retry = status_retry or StatusRetry()
        self.calls: dict[str, ReportedCall] = {}
        self.apns_device: Device | None = None
        self._http = httpx.AsyncClient(timeout=5)
        self._socket: ClientConnection | None = None
        self._deaf = False
        self._pushes: asyncio.Queue[Delivery] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0
        self._rang: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._policy_tasks: dict[str, asyncio.Task[Any]] = {}

    # ---- what the test or the demo does to the phone ---------------------------------

    @property
    def token(self) -> str:
        assert self.apns_device is not None, "install() first"
        return self.apns_device.token

    @property
    def connected(self) -> bool:
        return self._socket is not None and not self._deaf

    def bearer(self) -> str:
        return self.backend.auth.mint(self.user, "device", name=self.name)

    def events(self, kind: str | None = None, *, call_id: str | None = None, **detail: Any) -> list[Event]:
        return self.log.find(kind, device=self.device_id, call_id=call_id, **detail)

    async def wait_for(self, kind: str, *, call_id: str | None = None, timeout: float = 5.0, **detail: Any) -> Event:
        return await self.log.wait_for(kind, device=self.device_id, call_id=call_id, timeout=timeout, **detail)

    async def install(self, *, online: bool = True) -> None:
        """PushKit hands the app a VoIP token; the app registers it with the service."""
        self.apns_device = self.backend.apns.add_device(self.backend.voip_topic, online=online)
        self._pushes = self.apns_device.subscribe()
        self._spawn(self._receive_pushes())
        await self.register()

    async def register(self) -> dict[str, Any]:
        environment = self.apns_device.environment.value if self.apns_device else "sandbox"
        response = await self._http.put(
            f"{self.backend.base_url}/v1/devices/{self.device_id}",
            json={"voip_token": self.token, "apns_environment": environment, "bundle_id": self.backend.bundle_id},
            headers={"Authorization": f"Bearer {self.bearer()}"},
        )
        response.raise_for_status()
        self._record(
            "registered",
            token=f"…{self.token[-8:]}",
            environment=environment,
            online=self.apns_device.online if self.apns_device else None,
        )
        record: dict[str, Any] = response.json()
        return record

    async def open_app(self) -> None:
        """The app comes to the foreground (or was woken for a call) and connects."""
        if self._socket is not None and not self._deaf:
            return
        socket = await websockets.connect(
            f"{self.backend.ws_url}?device_id={self.device_id}",
            additional_headers={"Authorization": f"Bearer {self.bearer()}"},
        )
        hello = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
        self._socket, self._deaf = socket, False
        self._record("ws.connected", node=hello.get("node"))
        self._spawn(self._read(socket))

    async def close_app(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
            self._record("ws.closed")

    async def sleep(self) -> None:
        """No network: APNs holds pushes for the phone; the app is suspended."""
        await self.close_app()
        assert self.apns_device is not None
        self.apns_device.go_offline()
        self._record("network.offline")

    async def wake(self) -> None:
        """Back online: APNs hands over the push it kept, if any is still deliverable."""
        assert self.apns_device is not None
        self._record("network.online")
        self.apns_device.go_online()
        await asyncio.sleep(0)  # let the push loop take it

    def lose_network(self) -> None:
        """The network drops under an open WebSocket: the server still believes the
        socket open (TCP half-open) while nothing reaches the app."""
        assert self.apns_device is not None
        self.apns_device.go_offline()
        self._deaf = True
        self._record("network.lost", socket="half-open")

    def drop_socket(self) -> None:
        """The socket dies under the app (a network handover, the system tearing it down)
        and the server notices; the app, still in its CallKit call, has not reconnected."""
        assert self._socket is not None, "no socket to drop"
        self._socket.transport.abort()
        self._record("ws.dropped")

    async def regain_network(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.transport.abort()  # the old connection is dead; the app learns it now
        self._deaf = False
        await self.wake()

    async def call(self, callee: str, caller_name: str | None = None) -> str:
        """CXStartCallAction: the app picks the call's UUID and asks the service to ring."""
        call_id = str(uuid.uuid4())
        self.calls[call_id] = ReportedCall(call_id, "outgoing", callee, "dialling", self.log.now())
        self._record("callkit.start_call", call_id, callee=callee)
        frame: dict[str, Any] = {"type": "call.start", "callee": callee, "call_id": call_id}
        if caller_name:
            frame["caller_name"] = caller_name
        reply = await self._request(frame)
        if reply["type"] == "error":
            self._end(call_id, CXCallEndedReason.FAILED)
            raise CallRefused(reply)
        return call_id

    async def hang_up(self, call_id: str) -> dict[str, Any]:
        """CXEndCallAction from the user."""
        self._end_by_user(call_id)
        return await self._request({"type": "call.hangup", "call_id": call_id})

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()
            self._socket = None
        await self._http.aclose()

    # ---- PushKit ---------------------------------------------------------------------

    async def _receive_pushes(self) -> None:
        assert self._pushes is not None
        while True:
            delivery = await self._pushes.get()
            # didReceiveIncomingPushWith runs to completion before the next push: the
            # report to CallKit happens inside it, the status check after it returns.
            self._on_push(delivery)

    def _on_push(self, delivery: Delivery) -> None:
        self._dispatch_push(delivery.push.payload, delivery, stored=delivery.stored, late=delivery.late)

    def _must_report(self, delivery: Delivery | None) -> bool:
        """PushKit's rule, for a push PushKit delivered; `None`: a push from elsewhere (FCM)
        that no such rule binds: the app asks status_url before it rings."""
        return delivery is not None and self.must_report(delivery)

    def _dispatch_push(self, payload: dict[str, Any], delivery: Delivery | None, *, stored: bool, late: bool) -> None:
        kind, call_id = payload.get("type"), payload.get("call_id")
        self._record("push.received", call_id, type=kind, stored=stored, late=late)
        if kind == INCOMING and isinstance(call_id, str):
            self._on_invite(call_id, payload, delivery)
        elif kind in (CANCELLED, ENDED) and isinstance(call_id, str):
            # A hang-up push (`call.ended`) has the cancellation's shape and handling.
            self._on_cancellation(call_id, payload, delivery)
        elif self._must_report(delivery):
            self._report_placeholder(call_id, CXCallEndedReason.FAILED, why=f"unreadable push {kind!r}")

    def _on_invite(self, call_id: str, payload: dict[str, Any], delivery: Delivery | None) -> None:
        known = self.calls.get(call_id)
        if known is not None:
            if known.active:
                # The same UUID again: CallKit answers callUUIDAlreadyExists, nothing new rings.
                self._record("callkit.duplicate", call_id, phase=known.phase)
            elif self._must_report(delivery):
                self._report_placeholder(
                    call_id,
                    known.ended_reason or CXCallEndedReason.FAILED,
                    why="invite for a call that already ended here",
                )
            return
        caller = payload.get("caller", {}).get("display_name") or payload.get("caller", {}).get("id", "?")
        reported = self._must_report(delivery)
        if reported:
            self._report_incoming(call_id, caller, source="push")
            expires_at = payload.get("expires_at", 0) / 1000
            if expires_at > time.time():
                self._spawn(self._ring_until(call_id, expires_at))
        else:
            self._record("push.not_reported", call_id, why=self.unreported_why)
        self._spawn(self._check_status(call_id, caller, payload, reported))

    def _on_cancellation(self, call_id: str, payload: dict[str, Any], delivery: Delivery | None) -> None:
        call = self.calls.get(call_id)
        reason = cx_reason(payload.get("reason"))
        if call is not None and call.active:
            self._end(call_id, reason)
        elif self._must_report(delivery):
            self._report_placeholder(call_id, reason, why="cancellation for a call this phone never showed")
        else:
            self._record("push.not_reported", call_id, why=self.unreported_why)

    async def _ring_until(self, call_id: str, expires_at: float) -> None:
        """The push's `expires_at` ends a call still ringing here, whatever else failed:
        no status answer, no socket, no cancellation."""
        await asyncio.sleep(expires_at - time.time())
        call = self.calls.get(call_id)
        if call is not None and call.phase == "ringing":
            self._record("ring.expired", call_id)
            self._end(call_id, CXCallEndedReason.UNANSWERED)

    async def _check_status(self, call_id: str, caller: str, payload: dict[str, Any], reported: bool) -> None:
        expires_at = payload.get("expires_at", 0) / 1000
        wait = self.status_retry.first
        # Asked at least once, a late push included; asked again, with backoff, until a
        # verdict or `expires_at`.
        verdict, retry_after = await self._status(call_id, payload["status_url"])
        while verdict is None and time.time() < expires_at:
            call = self.calls.get(call_id)
            if reported and (call is None or not call.active):
                return  # ended meanwhile (the deadline, a cancellation push, the user)
            pause = min(max(wait, retry_after or 0.0), expires_at - time.time())
            self._record("status.retry", call_id, after=round(pause, 3))
            await asyncio.sleep(max(pause, 0.0))
            wait = min(wait * 2, self.status_retry.cap)
            if time.time() < expires_at:
                verdict, retry_after = await self._status(call_id, payload["status_url"])
        if verdict is None:
            # No verdict by the push's own deadline: the call rang its time.
            self._end(call_id, CXCallEndedReason.UNANSWERED)
            return
        if verdict["end_call"]:
            self._end(call_id, cx_reason(verdict.get("reason")))
            return
        if not reported:
            self._report_incoming(call_id, caller, source="push")
        await self._show(call_id)

    async def _status(self, call_id: str, url: str) -> tuple[dict[str, Any] | None, float | None]:
        """The verdict, or None and the 503's `retry_after` if it gave one."""
        try:
            response = await self._http.get(url)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self._record("status.failed", call_id, error=type(exc).__name__)
            return None, None
        if not isinstance(body, dict) or "end_call" not in body:
            self._record("status.failed", call_id, http=response.status_code, error=str(body)[:120])
            retry_after = body.get("retry_after") if isinstance(body, dict) else None
            return None, float(retry_after) if isinstance(retry_after, int | float) else None
        self._record(
            "status.checked",
            call_id,
            http=response.status_code,
            state=body.get("state"),
            end_call=body["end_call"],
            reason=body.get("reason"),
        )
        return body, None

    # ---- CallKit ---------------------------------------------------------------------

    def _report_incoming(self, call_id: str, caller: str, *, source: str) -> ReportedCall:
        call = ReportedCall(call_id, "incoming", caller, "ringing", self.log.now())
        self.calls[call_id] = call
        self._record("callkit.reported", call_id, caller=caller, source=source)
        return call

    def _report_placeholder(self, call_id: str | None, reason: CXCallEndedReason, *, why: str) -> None:
        # PushKit demands a reported call for every VoIP push; one that must not ring is
        # reported and ended in the same breath. A fresh UUID keeps it apart from a call
        # this phone already knows.
        placeholder = call_id if call_id and call_id not in self.calls else str(uuid.uuid4())
        self.calls[placeholder] = ReportedCall(placeholder, "incoming", "", "ringing", self.log.now())
        self._record("callkit.reported", call_id, caller="", source="push", placeholder=True, why=why)
        self._end(placeholder, reason, shown_as=call_id or placeholder)

    def _end(self, call_id: str, reason: CXCallEndedReason, *, shown_as: str | None = None) -> bool:
        """reportCall(with:endedAt:reason:): the call ended without the user."""
        call = self.calls.get(call_id)
        if call is None or not call.active:
            return False
        was = call.phase
        call.phase, call.ended_at, call.ended_reason = "ended", self.log.now(), reason
        self._cancel_policy(call_id)
        self._record(
            "callkit.ended",
            shown_as or call_id,
            reason=reason.value,
            was=was,
            lasted=round(call.ended_at - call.reported_at, 3),
            placeholder=shown_as is not None,
        )
        return True

    def _end_by_user(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.active:
            call.phase, call.ended_at, call.ended_by_user = "ended", self.log.now(), True
            self._cancel_policy(call_id)
        self._record("callkit.end_action", call_id)

    def _connected(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.active and call.phase != "connected":
            call.phase = "connected"
            self._record("callkit.connected", call_id)

    # ---- showing a call and the user's answer ----------------------------------------

    async def _show(self, call_id: str) -> None:
        """The call rings here: connect for signalling, tell the caller, let the user act."""
        await self.open_app()
        call = self.calls.get(call_id)
        if call is None or call.phase != "ringing" or call_id in self._rang:
            return
        self._rang.add(call_id)
        await self._request({"type": "call.ringing", "call_id": call_id})
        if self.policy.action != "ignore" and call_id not in self._policy_tasks:
            self._policy_tasks[call_id] = self._spawn(self._act(call_id))

    async def _act(self, call_id: str) -> None:
        await asyncio.sleep(self.policy.after)
        self._policy_tasks.pop(call_id, None)
        call = self.calls.get(call_id)
        if call is None or call.phase != "ringing":
            return
        if self.policy.action == "decline":
            self._end_by_user(call_id)
            await self._request({"type": "call.decline", "call_id": call_id})
            return
        self._record("callkit.answer_action", call_id)
        reply = await self._request({"type": "call.answer", "call_id": call_id})
        if reply["type"] == "ack":
            self._connected(call_id)
        else:  # CXAnswerCallAction.fail(): CallKit ends the call
            self._end(call_id, CXCallEndedReason.FAILED)

    def _cancel_policy(self, call_id: str) -> None:
        task = self._policy_tasks.pop(call_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ---- WebSocket -------------------------------------------------------------------

    async def _request(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        if self._socket is None:
            await self.open_app()
        assert self._socket is not None
        self._seq += 1
        request_id = f"{self.device_id}-{self._seq}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        self._record("ws.sent", frame.get("call_id"), type=frame["type"])
        try:
            await self._socket.send(orjson.dumps({**frame, "id": request_id}).decode())
            return await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(request_id, None)

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for message in socket:
                frame = orjson.loads(message)
                if self._deaf and socket is self._socket:
                    self._record("net.lost", frame.get("call_id"), type=frame.get("type"))
                    continue
                self._on_frame(frame)
        except websockets.ConnectionClosed:
            pass
        if socket is self._socket:
            self._socket = None
            self._record("ws.closed", code=socket.close_code)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind, call_id = frame.get("type"), frame.get("call_id")
        self._record("ws.received", call_id, type=kind, **{k: frame[k] for k in SHOWN_FIELDS if k in frame})
        future = self._replies.get(str(frame.get("id")))
        if future is not None and not future.done():
            future.set_result(frame)
            return
        if not isinstance(call_id, str):
            if kind == "device.reregister":
                self._spawn(self.register())
            return
        call = self.calls.get(call_id)
        if kind == "call.incoming":
            if call is None:  # foreground: the frame beat the push; the push will be a duplicate
                self._report_incoming(call_id, str(frame.get("caller", "?")), source="ws")
                self._spawn(self._show(call_id))
            else:
                self._record("ws.duplicate", call_id)
        elif kind == "call.ringing":
            if call is not None and call.active:
                self._record("callkit.ringback", call_id, ringing=frame.get("device_id"))
        elif kind == "call.answered":
            if call is not None and call.direction == "outgoing":
                self._connected(call_id)
        elif kind == "call.answered_elsewhere":
            self._end(call_id, CXCallEndedReason.ANSWERED_ELSEWHERE)
        elif kind in ENDING_FRAMES and call is not None:
            self._end(call_id, self._reason_for(call, frame))

    @staticmethod
    def _reason_for(call: ReportedCall, frame: dict[str, Any]) -> CXCallEndedReason:
        # The caller hears "declined" with the callee's side reason: to the caller's
        # CallKit the other end refused, which is remoteEnded.
        if call.direction == "outgoing" and frame["type"] == "call.declined":
            return CXCallEndedReason.REMOTE_ENDED
        return cx_reason(frame.get("reason"))

    # ---- plumbing --------------------------------------------------------------------

    def _record(self, kind: str, call_id: str | None = None, /, **detail: Any) -> Event:
        return self.log.record(self.device_id, kind, call_id, **detail)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                self._record("app.error", error=repr(finished.exception()))

        task.add_done_callback(done)
        return task
