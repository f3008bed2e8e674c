"""What happened to each push: APNs's answer on the call's timeline, as the device's
last push, and, for an accepted cancellation, in the call's cancellations."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from voip.stores.calls import CallRecord, queue_timeline
from voip.stores.layout import KeyLayout, Scripted, batch, load_script


class PushLog:
    def __init__(self, redis: Redis, keys: KeyLayout, *, retention: int, ops_channel: str) -> None:
        self._redis = redis
        self._keys = keys
        self._retention = retention
        self._ops_channel = ops_channel
        self._record_cancellation = load_script(redis, "record_cancellation")

    async def record_answer(
        self,
        call_id: str,
        entry: dict[str, Any],
        *,
        last_push: tuple[str, str, dict[str, Any]] | None = None,
        cancelled: tuple[str, int] | None = None,
        read_back_for: str | None = None,
    ) -> tuple[CallRecord | None, int | None]:
        """Put a push's answer on the timeline (published to operators too), all in one
        round trip: with `last_push` (user, device, entry), keep it as that device's last
        push; with `cancelled` (device, at), record that APNs accepted a cancellation for
        it; with `read_back_for` (a device), return the call as it is now and when APNs
        accepted a cancellation for that device (None, None without)."""
        call_key, timeline_key = self._keys.call(call_id), self._keys.timeline(call_id)
        scripts: list[Scripted] = []
        if cancelled is not None:
            scripts.append(
                (
                    self._record_cancellation,
                    [self._keys.cancellations(call_id), call_key],
                    [cancelled[0], cancelled[1], self._retention],
                )
            )

        def queue(pipe: Any) -> None:
            queue_timeline(pipe, timeline_key, self._ops_channel, call_id, [entry])
            if last_push is not None:
                user_id, device_id, push = last_push
                pipe.hset(self._keys.last_push(user_id), device_id, orjson.dumps(push))
            if read_back_for is not None:
                pipe.hgetall(call_key)
                pipe.hget(self._keys.cancellations(call_id), read_back_for)

        replies = await batch(self._redis, scripts, queue)
        if read_back_for is None:
            return None, None
        fields, cancelled_at = replies[-2], replies[-1]
        call = CallRecord.from_hash(call_id, {k.decode(): v.decode() for k, v in fields.items()}) if fields else None
        return call, int(cancelled_at) if cancelled_at else None

    async def record_last_push(self, user_id: str, device_id: str, entry: dict[str, Any]) -> None:
        await self._redis.hset(self._keys.last_push(user_id), device_id, orjson.dumps(entry))
