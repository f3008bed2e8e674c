"""Device records in Redis: what a device registered (tokens, environment), per user."""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis

from voip.clock import now_ms
from voip.redis_pipe import RedisPipe
from voip.stores.layout import KeyLayout, load_script, on_pipe
from voip.stores.presence import online_devices


class DeviceStore:
    def __init__(self, redis: Redis, keys: KeyLayout, *, pipe: RedisPipe | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._pipe = pipe  # the node's lean pipe on one Redis or Sentinel; redis-py when None
        self._drop_token = load_script(redis, "drop_voip_token")

    async def put(self, user_id: str, device_id: str, record: dict[str, Any], cap: int) -> list[str]:
        """Store a device; drop the least recently registered beyond `cap`. Returns the dropped."""
        key = self._keys.devices(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, device_id, orjson.dumps(record))
            pipe.hgetall(key)
            _, everything = await pipe.execute()
        if len(everything) <= cap:
            return []
        records = sorted(
            ((k.decode(), orjson.loads(v)) for k, v in everything.items()),
            key=lambda item: item[1]["updated_at"],
        )
        dropped = [device for device, _ in records[: len(records) - cap] if device != device_id]
        if dropped:
            await self._redis.hdel(key, *dropped)
        return dropped

    async def get(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(self._keys.devices(user_id), device_id)
        return orjson.loads(raw) if raw else None

    async def registered(self, user_id: str) -> dict[str, dict[str, Any]]:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.devices(user_id)))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def delete(self, user_id: str, device_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._keys.devices(user_id), device_id)
            pipe.hdel(self._keys.last_push(user_id), device_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def reachable(self, user_id: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """The user's registered devices and the ids of devices connected right now."""

        def read(pipe: Any) -> None:
            pipe.hgetall(self._keys.devices(user_id))
            pipe.hgetall(self._keys.presence(user_id))

        if self._pipe is not None:  # a SIP call's first read (voip/sipcalls/gateway.py)
            devices, presence = await on_pipe(self._pipe, [], read)
        else:
            async with self._redis.pipeline(transaction=False) as pipeline:
                read(pipeline)
                devices, presence = await pipeline.execute()
        return {k.decode(): orjson.loads(v) for k, v in devices.items()}, online_devices(presence)

    async def drop_voip_token(
        self, user_id: str, device_id: str, token: str, before_ms: int | None, *, field: str = "voip_token"
    ) -> bool:
        """Drop the token in `field` (`voip_token`, or an Android device's `fcm_token`) if it
        is still `token` and was registered before `before_ms` (any age when None)."""
        dropped = await self._drop_token(
            keys=[self._keys.devices(user_id)],
            args=[device_id, token, "" if before_ms is None else before_ms, now_ms(), field],
        )
        return bool(dropped)
