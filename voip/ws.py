"""`GET /v1/ws`: a device's WebSocket. Frames in are checked, then handed to the call
controller; frames out come from the bus, through an outbox, so one slow socket never
holds up delivery to the others.

An idle socket is most of what a node holds (docs/benchmarks.md, the idle-socket row), so
a socket's state is lean: its outbox is a list, written by a task that runs only while
there is something to write (the reader, the ASGI task itself, is the one task a socket
always has, and it notices a close at once whatever the writer does); its undo steps are a
list; the wait for its end is a future made only when a drain waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, NamedTuple

import orjson
import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voip import metrics
from voip.auth import AuthError, Principal
from voip.calls import Action, Party, verdict
from voip.controller import CallController, Caller, CallRejected
from voip.node import Node
from voip.protocol import (
    CALL_ERRORS,
    CALL_REFUSALS,
    MESSAGE_TYPES,
    CallAnswer,
    CallDecline,
    CallHangup,
    CallRinging,
    CallSignal,
    CallStart,
    ClientMessage,
    FrameType,
    Ping,
    call_error_frame,
    client_message,
    error_frame,
)
from voip.redis_pool import UNAVAILABLE
from voip.stores import CallError, CallRecord, CallRefused

log = structlog.get_logger(__name__)

# Refusals of a callee device's call.ringing or call.answer that mean the call is over
# for that device: the call left ringing, or another device holds it.
OVER_FOR_THIS_DEVICE = frozenset({"invalid_state", "not_in_call"})

# Not "." or "..": HTTP clients fold those path segments away.
DEVICE_ID = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._:-]{1,64}$")
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
# The user opened more sockets than VOIP_MAX_DEVICES_PER_USER: this one, the oldest, goes.
CLOSE_TOO_MANY_SOCKETS = 4008
# The node drains (SIGTERM): a `reconnect` frame, then this close; connect again at once.
CLOSE_SERVICE_RESTART = 1012
# On the user's bus channel only, never sent to a device: "close this socket of yours".
EVICT = "socket.evict"
# Redis is unavailable: reconnect with backoff (RFC 6455 §7.4.1, "Try Again Later").
CLOSE_TRY_AGAIN_LATER = 1013
OUTBOX_LIMIT = 256
CLOSE_GRACE = 2.0  # seconds the frames queued before a close get to go out
# A socket that closes this soon after a frame ending a ringing call went out to it may
# have closed unread (an app going to sleep as the caller hangs up): that device gets the
# cancellation push the ending skipped it for (CallPushes.unheard). A bound on the
# frame's trip and the app's read; the app dedupes a cancellation for a call it ended.
UNHEARD_WINDOW = 1.0
ENDINGS = frozenset(
    {FrameType.CALL_CANCELLED, FrameType.CALL_ANSWERED_ELSEWHERE, FrameType.CALL_DECLINED, FrameType.CALL_MISSED}
)


class Close(NamedTuple):
    """In the outbox: close the socket here, after the frames queued before it."""

    code: int
    reason: str


Outgoing = dict[str, Any] | Close


class Undo:
    """The undo steps of a socket's setup, run last first when it ends; what
    contextlib.AsyncExitStack does for these steps, in a list (its deque and a closure per
    callback cost about 2 KiB a socket). A step that raises does not stop the others; the
    first error is raised once all have run."""

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., Awaitable[object]], tuple[Any, ...]]] = []

    def push_async_callback(self, step: Callable[..., Awaitable[object]], *args: Any) -> None:
        self._steps.append((step, args))

    async def aclose(self) -> None:
        first: BaseException | None = None
        while self._steps:
            step, args = self._steps.pop()
            try:
                await step(*args)
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    async def __aenter__(self) -> Undo:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _authenticate(websocket: WebSocket, node: Node) -> Principal:
    header = websocket.headers.get("authorization")
    if header:
        return node.auth.bearer(header)
    token = websocket.query_params.get("access_token")
    if not token:
        raise AuthError("missing bearer token")
    return node.auth.verify(token)


def _request_id(frame: Any) -> Any:
    """The id a reply echoes: a frame's `id` if it is a string or an integer. `frame` is
    a parsed frame or a frame as received (a binary one has none)."""
    if isinstance(frame, str):
        try:
            frame = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(frame, dict):
        return None
    request_id = frame.get("id")
    return request_id if isinstance(request_id, (str, int)) else None


async def refuse(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse before accepting: an HTTP response where the server can send one."""
    from starlette.responses import JSONResponse

    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        error, _, detail = message.partition(": ")
        body = {"error": error, "message": detail or message}
        await websocket.send_denial_response(JSONResponse(body, status_code=status))
    else:
        await websocket.close(code=CLOSE_POLICY, reason=message)


async def receive_frame(websocket: WebSocket) -> str | bytes | None:
    """An accepted socket's next frame, text or binary; None once the socket has ended."""
    while True:
        try:
            event = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if event["type"] == "websocket.disconnect":
            return None
        text = event.get("text")
        frame: str | bytes | None = text if text is not None else event.get("bytes")
        if frame is not None:
            return frame


async def device_socket(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    try:
        principal = _authenticate(websocket, node)
    except AuthError as exc:
        await refuse(websocket, 401, f"unauthorized: {exc}")
        return
    if principal.role != "device":
        await refuse(websocket, 403, "forbidden: device role required")
        return
    device_id = websocket.query_params.get("device_id", "")
    if not DEVICE_ID.match(device_id):
        await refuse(websocket, 400, "bad_request: device_id query parameter missing or malformed")
        return
    if node.draining:
        await refuse(websocket, 503, "draining: this node is shutting down; connect again")
        return
    connection = DeviceConnection(websocket, node, principal.user_id, device_id, principal.name)
    # Each setup step registers its undo as it starts: whichever step fails, or however
    # the socket ends, nothing stays subscribed, present or counted.
    async with Undo() as undo:
        try:
            await connection.open(undo)
        except UNAVAILABLE:
            node.redis_unavailable.failed(route="/v1/ws")
            metrics.REDIS_UNAVAILABLE.labels("ws").inc()
            await undo.aclose()  # before the client hears it, so that it may come straight back
            await _try_again_later(websocket)
            return
        await websocket.accept()
        await connection.serve()


async def _try_again_later(websocket: WebSocket) -> None:
    """Redis is unavailable: the client hears 1013 and reconnects later, rather than being
    accepted by a node that cannot deliver it a call."""
    with contextlib.suppress(Exception):
        await websocket.accept()
        await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="try again later")


class DeviceConnection:
    __slots__ = (
        "_close_after_reply",
        "_ended",
        "_ended_waiter",
        "_endings_sent",
        "_gone",
        "_handling",
        "_room",
        "_serving",
        "_writer",
        "_writing_over",
        "bucket",
        "closing",
        "controller",
        "device_id",
        "node",
        "outbox",
        "refused_in_a_row",
        "socket_id",
        "token_name",
        "user_id",
        "websocket",
    )

    def __init__(
        self, websocket: WebSocket, node: Node, user_id: str, device_id: str, token_name: str | None = None
    ) -> None:
        self.websocket = websocket
        self.token_name = token_name
        self.node = node
        self.controller: CallController = node.controller
        self.user_id = user_id
        self.device_id = device_id
        # Frames (and a Close) waiting to go out, in order; at most OUTBOX_LIMIT.
        self.outbox: list[Outgoing] = []
        self._writer: asyncio.Task[None] | None = None  # runs while the outbox has frames
        # The writer met a Close, or a send failed, or the socket ended: nothing more is
        # written, and what is queued stays queued (its endings count as unheard).
        self._writing_over = False
        # Accepted and served: only then may the writer run. Frames the bus delivers before
        # (it is attached before the socket is accepted) wait in the outbox; a write before
        # the accept would fail and end all writing, the hello included.
        self._serving = False
        self._room: asyncio.Future[None] | None = None  # send() waits here while the outbox is full
        self.bucket = TokenBucket(node.settings.ws_rate, node.settings.ws_burst)
        self.refused_in_a_row = 0
        self.closing: Close | None = None
        self._handling = False  # a client frame is being handled; its reply is not queued yet
        self._close_after_reply: Close | None = None
        self.socket_id = f"{device_id}|{uuid.uuid4().hex}"
        self._ended = False
        self._ended_waiter: asyncio.Future[None] | None = None  # made when a drain waits for the end
        self._endings_sent: dict[str, float] | None = None  # call id -> when its ending frame went out
        self._gone = False

    def _put(self, item: Outgoing) -> bool:
        """Queue `item` and see that the writer runs; False (nothing queued) when full."""
        if len(self.outbox) >= OUTBOX_LIMIT:
            return False
        self.outbox.append(item)
        self._wake_writer()
        return True

    def _replace_all(self, item: Outgoing) -> None:
        """A socket this far behind: what it has queued goes, `item` takes its place."""
        self.outbox[:] = [item]
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writer is None and self._serving and not self._writing_over:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def deliver(self, frame: dict[str, Any]) -> None:
        if self._gone:  # between the socket's end and the bus letting go of it
            if frame.get("type") in ENDINGS:
                self._unheard([frame["call_id"]])
            return
        if frame.get("type") == EVICT:
            if frame.get("socket") == self.socket_id and self.closing is None:
                log.info("ws.evicted", user=self.user_id, device=self.device_id)
                self._close_after_queued(CLOSE_TOO_MANY_SOCKETS, "too_many_sockets")
            return
        if not self._put(frame):  # a socket this far behind is dead; let it reconnect
            log.warning("ws.outbox_full", user=self.user_id, device=self.device_id)
            self._replace_all(Close(CLOSE_POLICY, "too slow"))

    def _close_after_queued(self, code: int, reason: str) -> None:
        """Close once the replies already queued are written, so that a device refused
        for flooding or for an oversize frame hears its last replies before the close."""
        self.closing = Close(code, reason)
        if not self._put(self.closing):  # too far behind to wait for
            self._replace_all(self.closing)

    async def open(self, undo: Undo) -> None:
        """Subscribe, mark present, count the socket: each undo is pushed before its step
        can fail half-way, and none of them raises."""
        node = self.node
        await node.bus.attach(self.user_id, self.device_id, self.deliver)  # undoes itself on failure
        undo.push_async_callback(node.bus.detach, self.user_id, self.device_id, self.deliver)
        undo.push_async_callback(node.presence.release, self.user_id, self.device_id)
        await node.presence.hold(self.user_id, self.device_id)
        undo.push_async_callback(node.presence.uncount_socket, self.user_id, self.socket_id)
        cap = node.settings.max_devices_per_user
        for evicted in await node.stores.sockets.open(self.user_id, self.socket_id, cap):
            # Whichever node holds it closes it: the bus reaches the user's sockets everywhere.
            await node.bus.publish(self.user_id, {"type": EVICT, "socket": evicted}, only=[evicted.rsplit("|", 1)[0]])

    async def serve(self) -> None:
        metrics.WS_CONNECTIONS.inc()
        self.node.sockets[self] = self._drained
        self._serving = True
        # The hello first, before anything the bus delivered ahead of the accept.
        self.outbox.insert(0, {"type": FrameType.HELLO, "node": self.node.node_id, "device_id": self.device_id})
        self._wake_writer()
        try:
            if self.node.draining:  # accepted as the drain began: it may have missed this socket
                self._reconnect_elsewhere()
            await self._read()
        finally:
            self.node.sockets.pop(self, None)
            metrics.WS_CONNECTIONS.dec()
            writer = self._writer
            if self.closing is not None and writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writer), CLOSE_GRACE)
            self._writing_over = True
            writer = self._writer  # the one that ran out the grace, if any
            if writer is not None:
                writer.cancel()
                if self.closing is not None:
                    with contextlib.suppress(Exception):
                        await self.websocket.close(code=self.closing.code, reason=self.closing.reason)
            self._gone = True
            self._unheard(self._endings_unread())
            self._ended = True
            if self._ended_waiter is not None and not self._ended_waiter.done():
                self._ended_waiter.set_result(None)

    def _endings_unread(self) -> list[str]:
        """Calls whose ending frame this device may not have read: still queued, or sent
        within UNHEARD_WINDOW of the socket's end."""
        since = time.monotonic() - UNHEARD_WINDOW
        calls = {call_id for call_id, at in (self._endings_sent or {}).items() if at >= since}
        for frame in self.outbox:
            if isinstance(frame, dict) and frame.get("type") in ENDINGS:
                calls.add(frame["call_id"])
        self.outbox.clear()
        return sorted(calls)

    def _unheard(self, call_ids: list[str]) -> None:
        for call_id in call_ids:
            log.info("ws.ending_unheard", call_id=call_id, user=self.user_id, device=self.device_id)
            self.controller.pushes.unheard(call_id, self.device_id)

    def _reconnect_elsewhere(self) -> None:
        if self.closing is None:
            self._put({"type": FrameType.RECONNECT, "reason": "draining"})
            if self._handling:
                # The frame in hand has acted (a decline may be what ended the drain's last
                # transaction): its reply goes out before the close, or the device retries
                # an action that was done.
                self.closing = self._close_after_reply = Close(CLOSE_SERVICE_RESTART, "reconnect")
            else:
                self._close_after_queued(CLOSE_SERVICE_RESTART, "reconnect")

    async def _drained(self) -> None:
        """The node drains: say so, close with 1012 after what is queued, wait for the end."""
        self._reconnect_elsewhere()
        if self._ended:
            return
        if self._ended_waiter is None:
            self._ended_waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ended_waiter), CLOSE_GRACE * 2)

    async def send(self, frame: dict[str, Any]) -> None:
        # Every frame goes through the outbox: one task writes to the socket. A reply waits
        # for room in a full outbox (the device's own flood slows its reads), unless nothing
        # will be written any more.
        if frame["type"] == FrameType.ERROR:
            metrics.WS_ERRORS.labels(frame["code"]).inc()
        while not self._put(frame) and not self._writing_over:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    async def _write(self) -> None:
        """Writes the outbox out, then ends; the next frame queued starts it again."""
        try:
            while self.outbox and not self._writing_over:
                await self._write_one(self.outbox.pop(0))
                if self._room is not None and len(self.outbox) < OUTBOX_LIMIT:
                    self._room.set_result(None)
                    self._room = None
        finally:
            self._writer = None
            if self._writing_over and self._room is not None:
                self._room.set_result(None)  # a send() waiting for room stops waiting
                self._room = None

    async def _write_one(self, frame: Outgoing) -> None:
        if isinstance(frame, Close):
            self._writing_over = True
            with contextlib.suppress(Exception):
                await self.websocket.close(code=frame.code, reason=frame.reason)
            return
        if frame.get("type") in ENDINGS:
            now = time.monotonic()
            sent = {c: at for c, at in (self._endings_sent or {}).items() if at >= now - UNHEARD_WINDOW}
            sent[frame["call_id"]] = now
            self._endings_sent = sent
        try:
            await self.websocket.send_text(orjson.dumps(frame).decode())
        except Exception:
            self._writing_over = True
            return
        if "call_id" in frame and frame["type"] not in (FrameType.ACK, FrameType.ERROR, FrameType.CALL_SIGNAL):
            self.node.deliveries.record(
                frame["call_id"],
                {
                    "at": int(time.time() * 1000),
                    "event": "delivered",
                    "type": frame["type"],
                    "device": self.device_id,
                    "node": self.node.node_id,
                },
            )

    async def _read(self) -> None:
        limit = self.node.settings.ws_max_frame_bytes
        while (frame := await receive_frame(self.websocket)) is not None:
            if len(frame) > limit:  # the server's own cap normally closes first
                self._close_after_queued(CLOSE_TOO_BIG, "frame too large")
                return
            # Every frame counts against the rate, binary ones too: each costs a reply.
            if not self.bucket.take():
                self.refused_in_a_row += 1
                if self.refused_in_a_row > self.node.settings.ws_burst:
                    self._close_after_queued(CLOSE_POLICY, "too many frames")
                    return
                # The id says which request to retry; parsing is bounded by the close above.
                await self.send(error_frame("rate_limited", "too many frames; slow down", _request_id(frame)))
                continue
            self.refused_in_a_row = 0
            if isinstance(frame, bytes):
                await self.send(error_frame("bad_frame", "binary frames are not accepted"))
                continue
            self._handling = True
            try:
                reply = await self._handle(frame)
            finally:
                self._handling = False
            if reply is not None:
                await self.send(reply)
            if (close := self._close_after_reply) is not None:
                self._close_after_queued(close.code, close.reason)
                return
            if self.websocket.client_state is WebSocketState.DISCONNECTED:
                return

    async def _handle(self, data: str) -> dict[str, Any] | None:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            return error_frame("bad_json", "frame is not valid JSON")
        if not isinstance(raw, dict):
            return error_frame("bad_message", "a frame must be a JSON object")
        request_id = _request_id(raw)
        kind = raw.get("type")
        # Only a string can be a type: a list or an object is unhashable, and `in` would raise.
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            return error_frame("unknown_type", f"unknown message type {str(raw.get('type'))[:64]!r}", request_id)
        try:
            message = client_message.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
            return error_frame("invalid_message", f"{where}: {first['msg']}", request_id)
        try:
            return await self._dispatch(message)
        except CallRejected as exc:
            return call_error_frame(message.id, exc.call_id, exc.reason)
        except CallRefused as exc:
            frame = error_frame(exc.code, CALL_REFUSALS[exc.reason], message.id, getattr(message, "call_id", None))
            frame["reason"] = exc.reason
            if exc.retry_after:
                frame["retry_after"] = exc.retry_after
            return frame
        except CallError as exc:
            call_id = getattr(message, "call_id", None)
            frame = error_frame(exc.code, CALL_ERRORS.get(exc.code, exc.code), message.id, call_id)
            if call_id and exc.code in OVER_FOR_THIS_DEVICE and isinstance(message, CallRinging | CallAnswer):
                await self._tell_verdict(frame, call_id)
            return frame
        except UNAVAILABLE:
            self.node.redis_unavailable.failed(route="/v1/ws")
            metrics.REDIS_UNAVAILABLE.labels("ws").inc()
            frame = error_frame("unavailable", "the service is briefly unavailable; retry later", message.id)
            frame["retry_after"] = self.node.settings.redis_retry_after
            return frame
        except Exception:
            log.exception("ws.handler_failed", user=self.user_id, device=self.device_id)
            return error_frame("internal_error", "the request failed; try again", message.id)

    async def _tell_verdict(self, frame: dict[str, Any], call_id: str) -> None:
        """A callee device's `call.ringing` or `call.answer` refused because the call is
        over for it: the refusal carries the status verdict (`state`, `end_call`,
        `reason`), so that the app ends its CallKit call now, with the right reason, and
        not after another status round trip. bench --ghosts: a "ringing" verdict that
        arrived late (a slow status endpoint) sent the app to its socket after the call
        had ended, and it rang on until a cancellation push or `expires_at`."""
        call = await self.node.stores.calls.get(call_id)
        if call is None or call.callee_user != self.user_id:
            return
        told = verdict(
            call.state,
            party=Party.CALLEE,
            device_id=self.device_id,
            answered_by_device=call.answered_by_device,
            ring_deadline_ms=call.ring_deadline,
            now_ms=self.controller.clock.now_ms(),
        )
        frame.update(state=told.state.value, end_call=told.end_call, reason=told.reason.value if told.reason else None)

    async def _start(self, message: CallStart) -> None:
        """`call.started` is queued before any event of the call can be: the caller
        learns the call id first (a call nobody can take is missed at once)."""
        replied = False

        async def reply(call: CallRecord) -> None:
            nonlocal replied
            await self.send(
                {
                    "type": FrameType.CALL_STARTED,
                    "id": message.id,
                    "call_id": call.call_id,
                    "state": call.state.value,
                    "ring_deadline": call.ring_deadline,
                }
            )
            replied = True

        try:
            await self.controller.start_call(
                Caller(self.user_id, self.device_id),
                message.callee,
                message.call_id,
                caller_name=self.caller_name(message),
                custom=message.custom,
                sdp=message.sdp,
                on_started=reply,
            )
        except Exception:
            if not replied:
                raise
            # One reply per request, and the caller has had it. What failed after it
            # (telling devices, placing a SIP leg) is logged; the call in Redis, its ring
            # timeout and the status endpoint still say where it stands.
            log.exception("ws.after_call_started_failed", user=self.user_id, device=self.device_id)

    def caller_name(self, message: CallStart) -> str | None:
        """Who the callee is told is calling: the token's `name` (the app's backend said
        so); the client's own `caller_name` only with VOIP_TRUST_CLIENT_NAMES; else None,
        and the callee sees the caller's user id. The call hook may still override it."""
        if self.token_name:
            return self.token_name
        return message.caller_name if self.node.settings.trust_client_names else None

    async def _dispatch(self, message: ClientMessage) -> dict[str, Any] | None:
        ack = {"type": FrameType.ACK, "id": message.id}
        match message:
            case CallStart():
                await self._start(message)
                return None
            case CallRinging(call_id=call_id):
                await self.controller.ringing(self.user_id, self.device_id, call_id)
            case CallAnswer(call_id=call_id, sdp=sdp):
                await self.controller.act(Action.ANSWER, self.user_id, self.device_id, call_id, sdp=sdp)
            case CallDecline(call_id=call_id, busy=busy):
                await self.controller.act(Action.DECLINE, self.user_id, self.device_id, call_id, busy=busy)
            case CallHangup(call_id=call_id):
                transition = await self.controller.act(Action.HANGUP, self.user_id, self.device_id, call_id)
                ack["state"] = transition.call.state.value
            case CallSignal(call_id=call_id, payload=payload):
                await self.controller.signal(self.user_id, self.device_id, call_id, payload)
            case Ping():
                return {"type": FrameType.PONG, "id": message.id, "server_time": int(time.time() * 1000)}
        ack["call_id"] = message.call_id
        return ack
