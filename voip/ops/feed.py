"""The ops feed behind `GET /v1/ops/live` (voip/ops/live.py): every timeline entry of
every call, from every node, as it happens.

A node subscribes to the ops channel once, while at least one operator watches, and
fans each entry out to its operators' sockets. Each socket has its own bounded queue: an
operator that falls behind is disconnected (the page reconnects and reloads), never
allowed to hold up the others or to grow the node's memory.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis

from voip.log_throttle import RepeatedLog
from voip.ops import metrics
from voip.tasks import stop_task

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 512


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
