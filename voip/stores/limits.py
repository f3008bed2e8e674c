"""A callee's limits, counted in Redis so that every node sees the same counts: calls
ringing it now, and new calls to it this minute."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from voip.redis_pipe import RedisPipe
from voip.stores.calls import CalleeUnavailable, CallRefused
from voip.stores.layout import KeyLayout, batch, load_script
from voip.stores.presence import online_devices


class CalleeLimits:
    def __init__(
        self, redis: Redis, keys: KeyLayout, *, history_retention: int = 30 * 86400, pipe: RedisPipe | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._pipe = pipe  # the node's lean pipe on one Redis or Sentinel; redis-py when None
        self._admit = load_script(redis, "admit_call")
        # VOIP_HISTORY_RETENTION, ms: how far back the users' history indexes reach.
        self._history_ms = history_retention * 1000

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
        caller_user: str = "",
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Count the call against its callee's limits and availability, in one script on
        the callee's slot; raises CallRefused over a limit, CalleeUnavailable under
        do-not-disturb or busy. With `reach`, also returns the callee's devices and those
        connected now (DeviceStore.reachable), read in the same round trip.

        The call is filed in both parties' history indexes here, before it exists: the
        callee's by the script, the caller's (`caller_user`) in the same round trip. So
        no call ever lacks its entries; an entry whose call never came to be (refused
        here, the id taken, the node gone before the call's script) points at no call of
        its user's and is dropped when read (stores/history.py)."""

        def read(pipe: Any) -> None:
            if caller_user:
                index = self._keys.history(caller_user)
                pipe.zadd(index, {call_id: now}, nx=True)
                pipe.zremrangebyscore(index, "-inf", now - self._history_ms)
                pipe.pexpire(index, self._history_ms)
            if reach:
                pipe.hgetall(self._keys.devices(callee_user))
                pipe.hgetall(self._keys.presence(callee_user))

        keys = [self._keys.ringing(callee_user), self._keys.call_starts(callee_user)]
        if reach:  # an app user: not a SIP address, which has no history or availability here
            keys += [
                self._keys.history(callee_user),
                self._keys.availability(callee_user),
                self._keys.in_call(callee_user),
            ]
        (reason, retry_after, *in_call), *replies = await batch(
            self._redis,
            [(self._admit, keys, [call_id, now, ring_deadline, max_ringing, per_minute, self._history_ms])],
            read,
            pipe=self._pipe,
        )
        if reason in (b"dnd", b"busy"):
            raise CalleeUnavailable(reason.decode(), [c.decode() for c in in_call])
        if reason != b"ok":
            # The caller's entry stays: it may be a resent start's, of a call that exists.
            raise CallRefused(reason.decode(), int(retry_after))
        if not reach:
            return {}, set()
        devices, presence = replies[3:] if caller_user else replies
        return {k.decode(): orjson.loads(v) for k, v in devices.items()}, online_devices(presence)

    async def recent_calls_to(self, user_id: str) -> list[str]:
        """The calls made to this callee in the last minute (the rate limit's record)."""
        ids: list[bytes] = await self._redis.zrange(self._keys.call_starts(user_id), 0, -1)  # type: ignore[assignment]
        return [call_id.decode() for call_id in ids]

    async def forget_in_call(self, user_id: str, call_ids: list[str]) -> None:
        """Drop calls that are no longer answered from the user's in-call set: their end
        was not recorded there (the node that ended them went away between the call's
        script and this set's update)."""
        if call_ids:
            await self._redis.zrem(self._keys.in_call(user_id), *call_ids)
