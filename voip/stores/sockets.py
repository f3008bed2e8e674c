"""Each user's open WebSockets, counted across nodes, for the per-user cap."""

from __future__ import annotations

from redis.asyncio import Redis

from voip.clock import now_ms
from voip.stores.layout import KeyLayout, load_script


class SocketStore:
    def __init__(self, redis: Redis, keys: KeyLayout, *, retention: int) -> None:
        self._redis = redis
        self._keys = keys
        self._retention = retention
        self._open = load_script(redis, "open_socket")

    async def open(self, user_id: str, socket: str, cap: int) -> list[str]:
        """Count an open WebSocket of the user's; returns the oldest ones beyond `cap`,
        already uncounted, for their nodes to close. A socket left behind by a node that
        died is the oldest, so it is the first to go."""
        evicted = await self._open(keys=[self._keys.sockets(user_id)], args=[socket, now_ms(), cap, self._retention])
        return [s.decode() for s in evicted]

    async def close(self, user_id: str, socket: str) -> None:
        await self._redis.zrem(self._keys.sockets(user_id), socket)
