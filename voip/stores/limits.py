"""A callee's limits, counted in Redis so that every node sees the same counts: calls
ringing it now, and new calls to it this minute."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from voip.stores.calls import CallRefused
from voip.stores.layout import KeyLayout, execute_with_script, load_script
from voip.stores.presence import online_devices


class CalleeLimits:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys
        self._admit = load_script(redis, "admit_call")

    async def admit(
        self,
        call_id: str,
        callee_user: str,
        *,
        now: int,
        ring_deadline: int,
        max_ringing: int,
        per_minute: int,
        reach: bool = False,
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Count the call against its callee's limits, in one script on the callee's slot;
        raises CallRefused over a limit. With `reach`, also returns the callee's devices
        and those connected now (DeviceStore.reachable), read in the same round trip."""
        def read_devices(pipe: Pipeline) -> None:
            if reach:
                pipe.hgetall(self._keys.devices(callee_user))
                pipe.hgetall(self._keys.presence(callee_user))

        async with self._redis.pipeline(transaction=False) as pipe:
            (reason, retry_after), *read = await execute_with_script(
                pipe, self._admit,
                keys=[self._keys.ringing(callee_user), self._keys.call_starts(callee_user)],
                args=[call_id, now, ring_deadline, max_ringing, per_minute],
                build=read_devices,
            )
        if reason != b"ok":
            raise CallRefused(reason.decode(), int(retry_after))
        if not reach:
            return {}, set()
        devices, presence = read
        return {k.decode(): orjson.loads(v) for k, v in devices.items()}, online_devices(presence)

    async def recent_calls_to(self, user_id: str) -> list[str]:
        """The calls made to this callee in the last minute (the rate limit's record)."""
        ids: list[bytes] = await self._redis.zrange(self._keys.call_starts(user_id), 0, -1)  # type: ignore[assignment]
        return [call_id.decode() for call_id in ids]
