"""`GET /v1/ops/live`: the node's ops feed (voip/ops/feed.py) on an operator's socket."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from voip.node import Node
from voip.ops import metrics
from voip.ops.access import Refused, refuse, socket_operator
from voip.ops.feed import Subscriber

log = structlog.get_logger(__name__)

CLOSE_TOO_SLOW = 1013  # "try again later": the page reconnects and reloads


async def live(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    try:
        await socket_operator(websocket, node)
        if not node.stores.ops_channel:
            raise Refused(503, "feed_disabled", "the ops feed is off on this node (VOIP_OPS_FEED)")
    except Refused as refused:
        await refuse(websocket, refused)
        return
    feed = node.ops_feed
    try:
        subscriber = await feed.join()
    except Exception:
        log.warning("ops_feed.join_failed", exc_info=True)
        await refuse(websocket, Refused(503, "unavailable", "the ops feed is unavailable"))
        return
    metrics.LIVE_OPERATORS.inc()
    try:
        await websocket.accept()
        await websocket.send_text(feed.hello())
        await _serve(websocket, subscriber)
    finally:
        metrics.LIVE_OPERATORS.dec()
        await feed.leave(subscriber)


async def _serve(websocket: WebSocket, subscriber: Subscriber) -> None:
    reader = asyncio.create_task(_until_closed(websocket))
    writer = asyncio.create_task(_write(websocket, subscriber))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reader.cancel()
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)


async def _until_closed(websocket: WebSocket) -> None:
    """Operators only listen; anything they send is read and ignored."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def _write(websocket: WebSocket, subscriber: Subscriber) -> None:
    while (frame := await subscriber.queue.get()) is not None:
        try:
            await websocket.send_text(frame)
        except Exception:
            return
    metrics.LIVE_DROPPED.inc()
    with contextlib.suppress(Exception):
        await websocket.close(code=CLOSE_TOO_SLOW, reason="too slow: reconnect and reload")
