"""A node: one process's share of the service, wired once. Every node is equal; they
share nothing but Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from voip.auth import Authenticator
from voip.bus import Bus
from voip.controller import CallController, RingTimeouts
from voip.settings import Settings
from voip.store import Store


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.auth = Authenticator(settings.jwt_secret)
        # One pool per node, made once: no request builds a client.
        self.redis = Redis.from_url(settings.redis_url, max_connections=256)
        self.store = Store(
            self.redis, settings.redis_prefix, settings.call_retention, ops_feed=settings.ops_feed
        )
        self.bus = Bus(self.redis, settings.redis_prefix)
        self.controller = CallController(
            self.store, self.bus, node=self.node_id, ring_timeout=settings.ring_timeout
        )
        self.timeouts = RingTimeouts(self.controller)

    async def start(self) -> None:
        await self.redis.ping()
        await self.bus.start()
        self.timeouts.start()

    async def stop(self) -> None:
        await self.timeouts.stop()
        await self.bus.stop()
        await self.redis.aclose()
