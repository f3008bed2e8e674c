"""SSUBSCRIBE on a Redis Cluster, for the bus (voip/bus.py): the subscriptions live on the
primaries that own their channels' slots, one pub/sub connection each, all read into one
queue. The bus reads it as it reads one Redis's pub/sub: `get_message()`.

redis-py's ClusterPubSub reads its shards in turn with a timeout each (a frame waits for
the others' timeouts); here each shard has its own reader task.

A shard that says SUNSUBSCRIBE unasked (its slot moved away: a reshard) or drops (a
primary killed, a failover) has its channels placed again wherever their slots live
now, after redis-py has re-read the cluster's slot map. Meanwhile the bus sees the error
(a gap; frames published then are lost, as on one Redis) and then the new subscriptions'
confirmations (the gap's end).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from voip.tasks import stop_task

log = structlog.get_logger(__name__)

# Seconds between tries to place a shard's channels again while the cluster settles.
REPLACE_RETRY = 0.25


def node_client(node: ClusterNode) -> Redis:
    """A client of one cluster node for a pub/sub connection, its connections made as the
    cluster client makes that node's (its class, TLS in voip/redis_conn.py, and options:
    address, password, timeouts), but with no reconnect of their own: a dropped connection
    is raised at once, and the caller subscribes again wherever the slot map says now.
    (redis-py's default retries the same node three times with backoff: a killed primary
    was noticed about 3 s late, longer for a host that does not answer.) No health check
    either: a pub/sub left with no channel is health-checked by redis-py when it next
    subscribes, a PING read while the reader reads too, which fails ("read() called while
    another coroutine is already waiting") and the device's WebSocket with it; the reader
    notices a dropped connection itself."""
    options = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    return Redis.from_pool(ConnectionPool(connection_class=node.connection_class, **options))


class ShardedPubSub:
    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._queue: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        # channel -> name of the node it is subscribed on
        self.shard_channels: dict[bytes, str] = {}
        self._shards: dict[str, tuple[PubSub, asyncio.Task[None]]] = {}
        self._unsubscribing: set[bytes] = set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._opening = asyncio.Lock()

    async def ssubscribe(self, *channels: str | bytes) -> None:
        for channel in channels:
            await self._place(channel if isinstance(channel, bytes) else channel.encode())

    async def sunsubscribe(self, *channels: str | bytes) -> None:
        for raw in channels:
            channel = raw if isinstance(raw, bytes) else raw.encode()
            name = self.shard_channels.pop(channel, None)
            if name in self._shards:
                self._unsubscribing.add(channel)
                await self._shards[name][0].sunsubscribe(channel)

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        for replacing in list(self._replacing):
            await stop_task(replacing)
        shards, self._shards = self._shards, {}
        for pubsub, task in shards.values():
            await stop_task(task)
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _place(self, channel: bytes) -> None:
        node = self._cluster.get_node_from_key(channel.decode())
        if node is None:
            raise ConnectionError(f"no primary owns the slot of {channel!r}")
        self.shard_channels[channel] = node.name
        async with self._opening:  # one connection per shard, however many subscribe at once
            if node.name in self._shards:
                await self._shards[node.name][0].ssubscribe(channel)
                return
            pubsub = node_client(node).pubsub()
            await pubsub.ssubscribe(channel)  # connects: the reader needs the connection
            task = asyncio.create_task(self._read(node.name, pubsub), name=f"shard-{node.name}")
            self._shards[node.name] = (pubsub, task)

    async def _read(self, name: str, pubsub: PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the primary is gone: its channels go elsewhere
                self._queue.put_nowait(exc)
                self._shards.pop(name, None)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                self._replace_later([c for c, n in self.shard_channels.items() if n == name])
                return
            if message is None:
                continue
            if message["type"] == "sunsubscribe":
                channel = message["channel"]
                if channel in self._unsubscribing:
                    self._unsubscribing.discard(channel)
                    continue
                # Unasked: the slot moved. redis-py would subscribe it here again on a reconnect.
                pubsub.shard_channels.pop(channel, None)
                if self.shard_channels.get(channel) == name:
                    log.info("bus.slot_moved", channel=channel.decode(errors="replace"), node=name)
                    self._queue.put_nowait(ConnectionError("slot moved"))
                    self._replace_later([channel], moved_from=name)
                continue
            self._queue.put_nowait(message)

    def _replace_later(self, channels: list[bytes], moved_from: str = "") -> None:
        task = asyncio.create_task(self._replace(channels, moved_from), name="bus-resubscribe")
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, channels: list[bytes], moved_from: str = "") -> None:
        """Subscribe `channels` again at their slots' owners, once the slot map says where."""
        while channels:
            try:
                await self._cluster.nodes_manager.initialize()
                channels = [c for c in channels if c in self.shard_channels]
                for channel in list(channels):
                    node = self._cluster.get_node_from_key(channel.decode())
                    if node is None or node.name == moved_from:
                        continue  # the map we read is older than the move
                    await self._place(channel)
                    channels.remove(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.info("bus.resubscribe_waiting", channels=len(channels), exc_info=True)
            if channels:
                await asyncio.sleep(REPLACE_RETRY)
