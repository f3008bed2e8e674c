"""The deployment epoch's key, and how the Redis behind it keeps data (voip/epoch.py)."""

from __future__ import annotations

from redis.asyncio import Redis

from voip.redis_durability import Durability, inspect_durability
from voip.stores.layout import KeyLayout


class EpochStore:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    async def read(self) -> bytes | str | None:
        return await self._redis.get(self._keys.epoch)

    async def write_once(self, value: bytes) -> bool:
        """SET NX, no TTL: true if this wrote it, false if an epoch was there already."""
        return bool(await self._redis.set(self._keys.epoch, value, nx=True))

    async def durability(self) -> Durability:
        return await inspect_durability(self._redis)
