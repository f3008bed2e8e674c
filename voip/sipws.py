"""`GET /v1/sip`: SIP over WebSocket (RFC 7118) for browser softphones such as JsSIP.

The socket must ask for the subprotocol `sip`. Each frame, text or binary, is one SIP
message, handed to the node's one SIP stack as transport `WS` (`WSS` when the socket came
over TLS): the same transactions, registrar, digest and calls as UDP and TCP. What the
stack sends back goes out over the same socket, since a browser's Contact host is
`<random>.invalid`; when the socket ends, its bindings and calls end with it.

The socket itself carries no bearer token: every REGISTER and INVITE on it answers a
digest challenge (a WebSocket is never a trusted network). Limits: frames up to
VOIP_WS_MAX_FRAME_BYTES (1009 beyond), SIP_RATE/SIP_BURST messages per socket (1008 after
a burst of refusals), SIP_WS_MAX_CONNECTIONS sockets per node (503)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import NamedTuple

import structlog
from starlette.websockets import WebSocket

from sip.endpoint import WebSocketFlow
from voip import metrics
from voip.node import Node
from voip.ws import receive_frame, refuse

log = structlog.get_logger(__name__)

SUBPROTOCOL = "sip"
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
OUTBOX_LIMIT = 256
CLOSE_GRACE = 2.0  # seconds the messages queued before a close get to go out


class Close(NamedTuple):
    """In the outbox: close the socket here, after the messages queued before it."""

    code: int
    reason: str


async def sip_socket(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    if node.sip is None:
        await _refused(websocket, 404, "not_found: SIP is not enabled on this node (SIP_ENABLED)", "sip_disabled")
        return
    if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
        await _refused(
            websocket, 400, "bad_request: the WebSocket subprotocol must be 'sip' (RFC 7118)", "wrong_subprotocol"
        )
        return
    if node.draining:
        await _refused(websocket, 503, "draining: this node is shutting down; connect again", "draining")
        return
    if node.sip.endpoint.websockets_open >= node.settings.sip_ws_max_connections:
        await _refused(websocket, 503, "busy: too many SIP WebSockets on this node; connect again", "too_many")
        return
    connection = SipSocket(websocket, node)  # counted from here: no await between check and count
    try:
        await websocket.accept(subprotocol=SUBPROTOCOL)
    except BaseException:
        connection.flow.closed()
        raise
    await connection.serve()


async def _refused(websocket: WebSocket, status: int, message: str, reason: str) -> None:
    metrics.SIP_WS_CLOSED.labels(reason).inc()
    await refuse(websocket, status, message)


class SipSocket:
    """One accepted socket: a reader feeding the SIP stack, a writer draining the outbox."""

    def __init__(self, websocket: WebSocket, node: Node) -> None:
        assert node.sip is not None
        self.websocket = websocket
        self.node = node
        self.outbox: asyncio.Queue[bytes | Close] = asyncio.Queue(OUTBOX_LIMIT)
        self.closing: Close | None = None
        client = websocket.client
        peer = (client.host, client.port) if client is not None else ("0.0.0.0", 0)
        self.flow: WebSocketFlow = node.sip.endpoint.open_websocket(
            peer, self._send, self._close, secure=websocket.url.scheme == "wss"
        )

    def _send(self, data: bytes) -> None:
        if self.closing is not None:
            return
        try:
            self.outbox.put_nowait(data)
        except asyncio.QueueFull:  # a socket this far behind is dead; let it reconnect
            self._close(CLOSE_POLICY, "too slow")

    def _close(self, code: int, reason: str) -> None:
        if self.closing is not None:
            return
        self.closing = Close(code, reason)
        metrics.SIP_WS_CLOSED.labels(reason.split(":", 1)[0]).inc()
        log.info("sip.ws_closing", peer=_peer(self.flow), code=code, reason=reason)
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(self.closing)
            return
        # Too far behind to wait for: the close goes first.
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(self.closing)

    async def serve(self) -> None:
        metrics.SIP_WS_CONNECTIONS.inc()
        writer = asyncio.create_task(self._write(), name="sip-ws:write")
        self.node.sockets[self] = self._drained
        log.info("sip.ws_opened", peer=_peer(self.flow), transport=self.flow.name)
        try:
            await self._read()
        finally:
            self.node.sockets.pop(self, None)
            metrics.SIP_WS_CONNECTIONS.dec()
            self.flow.closed()
            if self.closing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writer), CLOSE_GRACE)
            writer.cancel()
            log.info("sip.ws_closed", peer=_peer(self.flow))

    async def _read(self) -> None:
        limit = self.node.settings.ws_max_frame_bytes
        while self.closing is None and (frame := await receive_frame(self.websocket)) is not None:
            if len(frame) > limit:  # the server's own cap normally closes first
                self.flow.close(CLOSE_TOO_BIG, "frame too large")
                return
            self.flow.receive(frame)

    async def _write(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, Close):
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=item.code, reason=item.reason)
                return
            try:
                # RFC 7118 §5: text frames carry UTF-8; anything else goes as binary.
                try:
                    text = item.decode("utf-8")
                except UnicodeDecodeError:
                    await self.websocket.send_bytes(item)
                else:
                    await self.websocket.send_text(text)
            except Exception:
                return

    async def _drained(self) -> None:
        """The node drains: the client reconnects (to another node) and registers again."""
        self.flow.close(1012, "reconnect")


def _peer(flow: WebSocketFlow) -> str:
    return f"{flow.peer[0]}:{flow.peer[1]}"
