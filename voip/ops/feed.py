"""The ops feed behind `GET /v1/ops/live` (voip/ops/live.py): every timeline entry of
every call, from every node, as it happens.

A node subscribes to the ops channel once, while at least one operator watches, and
fans each entry out to its operators' sockets. Each socket has its own bounded queue: an
operator that falls behind is disconnected (the page reconnects and reloads), never
allowed to hold up the others or to grow the node's memory.

The entries are published with plain PUBLISH from inside each call's script, on that call's
shard; on a Redis Cluster a plain PUBLISH reaches every node, primaries and replicas, so
the subscription may sit on any of them (first the primary that owns the channel's slot).
When that node dies the node subscribes on another one, straight away, from the slot map
as the live nodes tell it; a slot that moves does not touch a plain subscription. On one
Redis, or behind Sentinel, redis-py reconnects and subscribes again by itself.

Entries published in a gap are lost, as in any pub/sub gap: once subscribed again, every
operator who was watching gets `hello` again, the page's cue to read the snapshot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from voip.log_throttle import RepeatedLog
from voip.ops import metrics
from voip.shards import node_client
from voip.tasks import stop_task

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 512

# Seconds between tries to subscribe again while Redis is away.
RETRY = 0.5


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
    def __init__(self, redis: Redis, channel: str, *, node_id: str = "", queue_limit: int = QUEUE_LIMIT) -> None:
        self._redis = redis
        self._channel = channel
        self._node_id = node_id
        self._queue_limit = queue_limit
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # On a cluster: the node ("host:port") whose connection carries the subscription.
        self.subscribed_at = ""

    @property
    def watchers(self) -> int:
        return len(self._subscribers)

    def hello(self) -> str:
        """The frame that says: subscribed, so read the snapshot now and nothing falls between."""
        return orjson.dumps({"type": "hello", "node": self._node_id, "server_time": int(time.time() * 1000)}).decode()

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
        read_failed = RepeatedLog(log, "ops_feed.read_failed")
        clustered = isinstance(self._redis, RedisCluster)
        # The first subscription's failure ends the task: join() answers 503 at once.
        pubsub: PubSub | None = await self._subscribe()
        # Since a read failed: the operators watching then, to be told when it is over.
        gap: set[Subscriber] | None = None
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = await self._subscribe(avoid=self.subscribed_at)
                    message = await pubsub.get_message(timeout=None)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    read_failed.failed()
                    subscribed.clear()
                    if gap is None:
                        gap = set(self._subscribers)
                    if clustered and pubsub is not None:
                        # Its node is gone: another node takes the subscription, now.
                        await _close(pubsub)
                        pubsub = None
                        continue
                    # One Redis: redis-py reconnects and subscribes again on the next read.
                    await asyncio.sleep(RETRY)
                    continue
                read_failed.ok()
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # A confirmation after the first: subscribed again after a gap, which
                    # redis-py may have closed by itself (it reconnects once, unseen here).
                    if gap is not None or subscribed.is_set():
                        watching = (gap if gap is not None else self._subscribers) & self._subscribers
                        log.info("ops_feed.resubscribed", node=self.subscribed_at or None, watchers=len(watching))
                        hello = self.hello()
                        for subscriber in watching:
                            subscriber.offer(hello)
                        gap = None
                    subscribed.set()
                elif message["type"] == "message" and self._task is asyncio.current_task():
                    self._fan_out(message["data"])
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def _subscribe(self, avoid: str = "") -> PubSub:
        """A pub/sub connection that has sent SUBSCRIBE (the confirmation is read as a message)."""
        if not isinstance(self._redis, RedisCluster):
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
            except BaseException:
                await _close(pubsub)
                raise
            return pubsub
        cluster = self._redis
        if avoid or not cluster.get_nodes():
            await cluster.nodes_manager.initialize()  # the slot map as the live nodes tell it now
        owner = cluster.get_node_from_key(self._channel)
        # The slot's owner first (any node hears a plain PUBLISH); the node that just failed last.
        nodes = sorted(cluster.get_nodes(), key=lambda node: (node.name == avoid, node is not owner))
        failure: Exception | None = None
        for node in nodes:
            pubsub = node_client(node).pubsub()
            try:
                await pubsub.subscribe(self._channel)
            except Exception as exc:  # dead or unreachable: the next one
                failure = exc
                await _close(pubsub)
                continue
            self.subscribed_at = node.name
            return pubsub
        raise ConnectionError("no cluster node took the ops channel's subscription") from failure


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()
