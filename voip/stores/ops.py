"""What operators read (voip/ops/): a call with its timeline, a user's devices with their
presence and last push, the calls index by creation time, and live-feed tickets."""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis

from voip.stores.layout import BUCKETS, KeyLayout


class OpsStore:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    async def call_with_timeline(self, call_id: str) -> tuple[dict[bytes, bytes], list[dict[str, Any]]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.call(call_id))
            pipe.lrange(self._keys.timeline(call_id), 0, -1)
            fields, entries = await pipe.execute()
        return fields, [orjson.loads(e) for e in entries]

    async def timelines(self, call_ids: list[str]) -> list[list[dict[str, Any]]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.lrange(self._keys.timeline(call_id), 0, -1)
            return [[orjson.loads(e) for e in raw] for raw in await pipe.execute()]

    async def user_devices(self, user: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes]]:
        """The user's device records, presence and last pushes, as stored (by device id)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.devices(user))
            pipe.hgetall(self._keys.presence(user))
            pipe.hgetall(self._keys.last_push(user))
            devices, presence, pushes = await pipe.execute()
        return devices, presence, pushes

    # The calls index: call ids scored by creation time (ms) ------------------------------

    # Spread over BUCKETS keys (layout.py): each read asks every bucket in one pipeline and
    # merges; operators read it, calls do not.

    async def indexed_at(self, created_at: int) -> list[str]:
        """The ids indexed at exactly this millisecond."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket in range(BUCKETS):
                pipe.zrange(self._keys.calls_bucket(bucket), created_at, created_at, byscore=True)
            found = cast(list[list[bytes]], await pipe.execute())
        return sorted(m.decode() for members in found for m in members)

    async def indexed_before(self, ceiling: int | str, floor: int | str, count: int) -> list[tuple[str, int]]:
        """Up to `count` (id, created_at), newest first, between `ceiling` and `floor`
        (ZRANGE BYSCORE bounds: "(" excludes)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket in range(BUCKETS):
                pipe.zrange(
                    self._keys.calls_bucket(bucket),
                    ceiling,
                    floor,
                    desc=True,
                    byscore=True,
                    withscores=True,
                    offset=0,
                    num=count,
                )
            found = cast(list[list[tuple[bytes, float]]], await pipe.execute())
        # Each bucket's newest `count`: the merged newest `count` are among them. Ties in a
        # millisecond go by id descending, as ZRANGE REV orders them in one set.
        merged = sorted(((int(score), m) for members in found for m, score in members), reverse=True)
        return [(m.decode(), score) for score, m in merged[:count]]

    async def unindex(self, call_ids: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.zrem(self._keys.calls_index(call_id), call_id)
            await pipe.execute()

    async def calls(self, call_ids: list[str]) -> list[dict[bytes, bytes]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hgetall(self._keys.call(call_id))
            return await pipe.execute()

    # Live-feed tickets: Redis holds only their hash, so reading Redis hands out none ----

    async def put_ticket(self, digest: str, user_id: str, ttl: int) -> None:
        await self._redis.set(self._keys.ops_ticket(digest), user_id, ex=ttl)

    async def take_ticket(self, digest: str) -> str | None:
        """The ticket's operator, once: GETDEL, so two sockets racing with it, one wins."""
        user_id = await self._redis.getdel(self._keys.ops_ticket(digest))
        if user_id is None:
            return None
        return user_id.decode() if isinstance(user_id, bytes) else str(user_id)
