"""`GET /v1/ops/live`: every timeline entry of every call, from every node, as it happens.

A node subscribes to the ops channel once, while at least one operator watches, and
fans each entry out to its operators' sockets. Each socket has its own bounded queue: an
operator that falls behind is disconnected (the page reconnects and reloads), never
allowed to hold up the others or to grow the node's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.websockets import WebSocket, WebSocketDisconnect

from voip.log_throttle import RepeatedLog
from voip.node import Node
from voip.ops import metrics
from voip.ops.access import Refused, refuse, socket_operator
from voip.tasks import stop_task

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 512
CLOSE_TOO_SLOW = 1013  # "try again later": the page reconnects and reloads


class Subscriber:
    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(limit)
        self.dropped = False

    def offer(self, frame: str) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class OpsFeed:
    def __init__(self, redis: Redis, channel: str, *, queue_limit: int = QUEUE_LIMIT) -> None:
        self._redis = redis
        self._channel = channel
        self._queue_limit = queue_limit
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def watchers(self) -> int:
        return len(self._subscribers)

    async def join(self) -> Subscriber:
        """A queue of entries published from now on (the subscription is confirmed)."""
        subscriber = Subscriber(self._queue_limit)
        self._subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self._subscribed = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._subscribed), name="ops-feed")
        task, waiter = self._task, asyncio.ensure_future(self._subscribed.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._subscribed.is_set():
            await self.leave(subscriber)
            failure = task.exception() if task.done() and not task.cancelled() else None
            raise ConnectionError("could not subscribe to the ops channel") from failure
        return subscriber

    async def leave(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        if not self._subscribers and self._task is not None:
            # Nobody watches: the node stops listening, so the feed costs nothing unused.
            task, self._task = self._task, None
            await stop_task(task)

    def _fan_out(self, data: bytes) -> None:
        metrics.LIVE_ENTRIES.inc()
        # The channel carries {"call_id": ..., "entry": ...}; one splice, not one per operator.
        frame = '{"type":"entry",' + data[1:].decode()
        for subscriber in list(self._subscribers):
            subscriber.offer(frame)

    async def _run(self, subscribed: asyncio.Event) -> None:
        pubsub = self._redis.pubsub()
        read_failed = RepeatedLog(log, "ops_feed.read_failed")
        try:
            await pubsub.subscribe(self._channel)
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a dropped connection: redis-py resubscribes on the next read
                    read_failed.failed()
                    await asyncio.sleep(0.5)
                    continue
                read_failed.ok()
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    subscribed.set()
                elif message["type"] == "message" and self._task is asyncio.current_task():
                    self._fan_out(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def feed_of(app: Starlette) -> OpsFeed:
    feed: OpsFeed | None = getattr(app.state, "ops_feed", None)
    if feed is None:
        node: Node = app.state.node
        feed = app.state.ops_feed = OpsFeed(node.connections.client, node.stores.ops_channel)
    return feed


async def live(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    try:
        await socket_operator(websocket, node)
        if not node.stores.ops_channel:
            raise Refused(503, "feed_disabled", "the ops feed is off on this node (VOIP_OPS_FEED)")
    except Refused as refused:
        await refuse(websocket, refused)
        return
    feed = feed_of(websocket.app)
    try:
        subscriber = await feed.join()
    except Exception:
        log.warning("ops_feed.join_failed", exc_info=True)
        await refuse(websocket, Refused(503, "unavailable", "the ops feed is unavailable"))
        return
    metrics.LIVE_OPERATORS.inc()
    try:
        await websocket.accept()
        hello = {"type": "hello", "node": node.node_id, "server_time": int(time.time() * 1000)}
        await websocket.send_json(hello)
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
