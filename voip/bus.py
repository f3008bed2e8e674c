"""Cross-node delivery: a frame for a user's devices reaches them on whichever node they
are connected, over Redis sharded pub/sub (SPUBLISH/SSUBSCRIBE) with one channel per
user, `{u:<user_id>}:bus`. Sharded on one Redis 7 as on a cluster, one path for both: on a
cluster each frame goes to its channel's shard only (plain PUBLISH is copied to every
node), and the subscriptions follow their slots (voip/shards.py).

Pub/sub is fire-and-forget on purpose: a device that is not connected anywhere learns of
the call by VoIP push and from the call-status endpoint, never from a queue that would
replay stale calls to it later.

After a Redis failover the reader reconnects through the node's pool, which asks the
Sentinels for the new master, and redis-py subscribes again to every channel held; on a
cluster, voip/shards.py places them on the new owners of their slots.
Frames published during the gap are lost (docs/deploy.md#redis-sentinel); once back,
the bus hands `on_recovered` the start of the gap, so that the endings of calls its
devices missed can be told again (CallController.retell_endings).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from voip.log_throttle import RepeatedLog
from voip.redis_pipe import RedisPipe, command
from voip.shards import ShardedPubSub
from voip.stores.layout import KeyLayout, clustered
from voip.tasks import stop_task

log = structlog.get_logger(__name__)

SUBSCRIBE_TIMEOUT = 5.0

Deliver = Callable[[dict[str, Any]], Awaitable[None]]
# A frame for a user's devices: (user id, frame, only these devices or None for all, not these).
Addressed = tuple[str, dict[str, Any], Iterable[str] | None, Iterable[str]]
# Called once the bus is subscribed again after a gap: (users with devices here, gap start ms).
Recovered = Callable[[list[str], int], Awaitable[None]]


class Bus:
    def __init__(self, redis: Redis, prefix: str, *, pipe: RedisPipe | None = None) -> None:
        self._redis = redis
        # Publishes go over the node's lean pipe on one Redis or Sentinel (redis-py when None).
        self._pipe = pipe
        self._prefix = prefix
        self._keys = KeyLayout(prefix)
        self._pubsub: ShardedPubSub | PubSub = (
            ShardedPubSub(redis) if isinstance(redis, RedisCluster) else redis.pubsub()
        )
        # user id -> device id -> deliver callables (a device may briefly hold two sockets)
        self._local: dict[str, dict[str, list[Deliver]]] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribing: dict[str, asyncio.Task[None]] = {}
        self._read_failed = RepeatedLog(log, "bus.read_failed")
        self._unsubscribe_failed = RepeatedLog(log, "bus.unsubscribe_failed")
        self.on_recovered: Recovered | None = None
        self._gap_since: int | None = None
        self._recovering: set[asyncio.Task[None]] = set()

    def channel(self, user_id: str) -> str:
        return self._keys.bus_channel(user_id)

    async def start(self) -> None:
        # Subscribed to something from the start, so the reader always has a connection.
        await self._pubsub.ssubscribe(f"{self._prefix}bus")
        self._reader = asyncio.create_task(self._read(), name="bus-reader")

    async def stop(self) -> None:
        await stop_task(self._reader)
        for task in list(self._recovering):
            await stop_task(task)
        await self._pubsub.aclose()

    async def publish(
        self,
        user_id: str,
        frame: dict[str, Any],
        *,
        only: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        channel, envelope = self.channel(user_id), self.envelope(frame, only=only, exclude=exclude)
        if self._pipe is not None:
            await self._spublish([command("SPUBLISH", channel, envelope)])
            return
        await self._redis.spublish(channel, envelope)

    async def _spublish(self, commands: list[bytes]) -> None:
        assert self._pipe is not None
        for reply in await self._pipe.execute([(one, None) for one in commands]):
            if isinstance(reply, Exception):
                raise reply

    async def publish_many(self, frames: list[Addressed]) -> None:
        """Several frames, to any users, in one round trip: one pipeline of SPUBLISH. On a
        cluster, where each channel lives on its own shard, one SPUBLISH each, concurrently."""
        if len(frames) == 1:
            user_id, frame, only, exclude = frames[0]
            await self.publish(user_id, frame, only=only, exclude=exclude)
            return
        if clustered(self._redis):
            await asyncio.gather(
                *(self.publish(user_id, frame, only=only, exclude=exclude) for user_id, frame, only, exclude in frames)
            )
            return
        if self._pipe is not None:
            await self._spublish(
                [
                    command("SPUBLISH", self.channel(user_id), self.envelope(frame, only=only, exclude=exclude))
                    for user_id, frame, only, exclude in frames
                ]
            )
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id, frame, only, exclude in frames:
                pipe.spublish(self.channel(user_id), self.envelope(frame, only=only, exclude=exclude))
            await pipe.execute()

    @staticmethod
    def envelope(frame: dict[str, Any], *, only: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> bytes:
        """What goes on a user's channel: the frame, and which of their devices get it."""
        return orjson.dumps(
            {"frame": frame, "only": list(only) if only is not None else None, "exclude": list(exclude)}
        )

    async def attach(self, user_id: str, device_id: str, deliver: Deliver) -> None:
        """Route the user's frames for `device_id` to `deliver`; returns once Redis has
        confirmed the subscription, so nothing published after it is missed. Raises if it
        could not be confirmed, with nothing left attached or subscribed."""
        devices = self._local.setdefault(user_id, {})
        first = not devices
        devices.setdefault(device_id, []).append(deliver)
        try:
            if first:
                task = self._subscribing[user_id] = asyncio.create_task(self._subscribe(user_id))
                # Retrieved here too: every socket waiting on it may have gone.
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # Every socket of the user's waits for the one subscription, and fails with it.
            if subscribing := self._subscribing.get(user_id):
                await asyncio.shield(subscribing)
        except BaseException:
            await self.detach(user_id, device_id, deliver)
            raise

    async def _subscribe(self, user_id: str) -> None:
        channel = self.channel(user_id).encode()
        confirmed = self._confirmed[channel] = asyncio.Event()
        try:
            await self._pubsub.ssubscribe(channel)
            await asyncio.wait_for(confirmed.wait(), timeout=SUBSCRIBE_TIMEOUT)
        finally:
            # A later subscription of the same user's may have taken these places.
            if self._confirmed.get(channel) is confirmed:
                del self._confirmed[channel]
            if self._subscribing.get(user_id) is asyncio.current_task():
                del self._subscribing[user_id]

    async def detach(self, user_id: str, device_id: str, deliver: Deliver) -> None:
        """Never raises: a subscription Redis could not drop now is forgotten, so that no
        reconnect subscribes it again."""
        devices = self._local.get(user_id, {})
        handlers = devices.get(device_id, [])
        if deliver in handlers:
            handlers.remove(deliver)
        if not handlers:
            devices.pop(device_id, None)
        if not devices and user_id in self._local:
            del self._local[user_id]
            channel = self.channel(user_id)
            try:
                await self._pubsub.sunsubscribe(channel)
            except Exception:
                # redis-py resubscribes what it remembers after a reconnect: forget it.
                self._pubsub.shard_channels.pop(channel.encode(), None)
                self._unsubscribe_failed.failed()

    def attached(self, user_id: str, device_id: str) -> bool:
        """Does this node hold the device now (a socket, a SIP leg or a registered phone)?"""
        return bool(self._local.get(user_id, {}).get(device_id))

    def subscribed_users(self) -> int:
        """Users with a subscription here, or one on its way."""
        return len(self._local)

    def local_devices(self) -> int:
        return sum(len(devices) for devices in self._local.values())

    async def _read(self) -> None:
        # The user id sits between "...{u:" and "}:bus".
        head, _, rest = self.channel("").encode().partition(b"}")
        tail = b"}" + rest
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # a dropped connection or failover: redis-py resubscribes on the next read
                self._read_failed.failed()
                if self._gap_since is None:
                    self._gap_since = int(time.time() * 1000)
                await asyncio.sleep(0.5)
                continue
            self._read_failed.ok()
            if message is None:
                continue
            if self._gap_since is not None:  # subscribed again: from here on nothing is missed
                self._recovered(self._gap_since)
                self._gap_since = None
            channel: bytes = message["channel"]
            if message["type"] == "ssubscribe":
                if event := self._confirmed.pop(channel, None):
                    event.set()
                continue
            if message["type"] != "smessage" or not (channel.startswith(head) and channel.endswith(tail)):
                continue
            await self._dispatch(channel[len(head) : -len(tail)].decode(), message["data"])

    def _recovered(self, since_ms: int) -> None:
        log.info("bus.resubscribed", users=len(self._local), gap_since=since_ms)
        if self.on_recovered is None or not self._local:
            return
        task = asyncio.create_task(self._retell(list(self._local), since_ms))
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _retell(self, users: list[str], since_ms: int) -> None:
        assert self.on_recovered is not None
        try:
            await self.on_recovered(users, since_ms)
        except Exception:  # Redis gone again: the next recovery tells them
            log.warning("bus.retell_failed", exc_info=True)
            if self._gap_since is None:
                self._gap_since = since_ms

    async def deliver_local(self, user_id: str, frame: dict[str, Any], *, exclude: Iterable[str] = ()) -> None:
        """Hand a frame to the user's devices on this node only, as if it came over the bus."""
        await self._dispatch(user_id, self.envelope(frame, exclude=exclude))

    async def _dispatch(self, user_id: str, data: bytes) -> None:
        devices = self._local.get(user_id)
        if not devices:
            return
        envelope = orjson.loads(data)
        only, exclude = envelope["only"], envelope["exclude"]
        # Looked up, not scanned, when the frame names its devices: a SIP trunk's caller
        # id may hold a leg device per call in progress.
        chosen = devices.items() if only is None else ((d, devices[d]) for d in dict.fromkeys(only) if d in devices)
        targets = [deliver for device_id, handlers in chosen if device_id not in exclude for deliver in handlers]
        for deliver in targets:
            try:
                await deliver(envelope["frame"])
            except Exception:  # one broken socket must not starve the others
                log.warning("bus.deliver_failed", user=user_id, exc_info=True)
