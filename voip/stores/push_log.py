"""What happened to each push: APNs's answer on the call's timeline, as the device's
last push, and, for an accepted cancellation, in the call's cancellations.

Two scripts, one per slot (the call's, the user's), over the node's lean pipe
(voip/redis_pipe.py) when it has one: through redis-py the same writes, as a pipeline of
four or five commands, cost about five times the CPU (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from voip.redis_pipe import StatusPipe
from voip.stores.calls import CallRecord
from voip.stores.layout import KeyLayout, load_script


class PushLog:
    def __init__(
        self,
        redis: Redis,
        keys: KeyLayout,
        *,
        retention: int,
        ops_channel: str,
        pipe: StatusPipe | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._retention = retention
        self._ops_channel = ops_channel
        self._pipe = pipe  # redis-py when None
        self._record_push = load_script(redis, "record_push")
        self._last_push = load_script(redis, "last_push")

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._pipe is None:
            return await script(keys=keys, args=args)
        return await self._pipe.evalsha(script.sha, script.script, keys, args)

    async def record_answer(
        self,
        call_id: str,
        entry: dict[str, Any],
        *,
        last_push: tuple[str, str, dict[str, Any]] | None = None,
        cancelled: tuple[str, int] | None = None,
        read_back_for: str | None = None,
        refused: str | None = None,
    ) -> tuple[CallRecord | None, int | None]:
        """Put a push's answer on the timeline (published to operators too): with
        `last_push` (user, device, entry), keep it as that device's last push; with
        `cancelled` (device, at), record that APNs accepted a cancellation for it; with
        `read_back_for` (a device), return the call as it is now and when APNs accepted a
        cancellation for that device (None, None without); with `refused` (a device), take
        it out of the call's invite pushes, as the platform holds nothing for it to cancel.
        Run again whole after a
        transient failure: the last push first, as a second write of it changes nothing."""
        if last_push is not None:
            await self.record_last_push(*last_push)
        device, at = cancelled or ("", 0)
        reply = await self._run(
            self._record_push,
            [
                self._keys.timeline(call_id),
                self._keys.call(call_id),
                self._keys.cancellations(call_id),
                self._keys.pushes(call_id),
            ],
            [
                orjson.dumps(entry),
                self._ops_channel,
                call_id,
                device,
                at,
                self._retention,
                read_back_for or "",
                refused or "",
            ],
        )
        if read_back_for is None:
            return None, None
        fields, cancelled_at = reply
        if not fields:
            return None, int(cancelled_at) if cancelled_at else None
        pairs = iter(fields)
        call = CallRecord.from_hash(call_id, {k.decode(): v.decode() for k, v in zip(pairs, pairs, strict=True)})
        return call, int(cancelled_at) if cancelled_at else None

    async def record_last_push(self, user_id: str, device_id: str, entry: dict[str, Any]) -> None:
        await self._run(self._last_push, [self._keys.last_push(user_id)], [device_id, orjson.dumps(entry)])
