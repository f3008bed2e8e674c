"""A callee's limits, counted in Redis so that every node sees the same counts: calls
ringing it now, and new calls to it this minute."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from voip.stores.calls import CallRefused
from voip.stores.layout import KeyLayout, batch, load_script
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

        def read(pipe: Any) -> None:
            if reach:
                pipe.hgetall(self._keys.devices(callee_user))
                pipe.hgetall(self._keys.presence(callee_user))

        (reason, retry_after), *devices_presence = await batch(
            self._redis,
            [
                (
                    self._admit,
                    [self._keys.ringing(callee_user), self._keys.call_starts(callee_user)],
                    [call_id, now, ring_deadline, max_ringing, per_minute],
                )
            ],
            read,
        )
        if reason != b"ok":
            raise CallRefused(reason.decode(), int(retry_after))
        if not reach:
            return {}, set()
        devices, presence = devices_presence
        return {k.decode(): orjson.loads(v) for k, v in devices.items()}, online_devices(presence)

    async def recent_calls_to(self, user_id: str) -> list[str]:
        """The calls made to this callee in the last minute (the rate limit's record)."""
        ids: list[bytes] = await self._redis.zrange(self._keys.call_starts(user_id), 0, -1)  # type: ignore[assignment]
        return [call_id.decode() for call_id in ids]
