"""The webhook outbox's delivery side in Redis (docs/webhooks.md#delivery).

Each call's events are in its own list, `{c:<call_id>}:webhooks`, appended by the very
script that changes the call (lua/). The call is filed in a due index, 16 buckets by its
id, in the same round trip. Any node claims due calls under a lease, takes the call's
delivery lock (one node at a time delivers a call's events: in order), sends what each URL
has not had yet, records how far each URL got, and moves the call in the due index only
if nobody filed a newer event meanwhile. Keys: layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from voip.stores.layout import BUCKETS, KeyLayout, batch, load_script


@dataclass(frozen=True, slots=True)
class Taken:
    events: list[bytes]
    """The call's outbox, oldest first (JSON records)."""
    cursors: dict[str, str]
    """Per URL: how many events it has (`<url key>:sent`), failures in a row, when the
    first of them was, when to try again."""
    state: str
    """The call's state, "" for a call past its retention."""


class WebhookOutbox:
    def __init__(self, redis: Redis, keys: KeyLayout, *, ttl: int) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl = ttl
        self._claim = load_script(redis, "claim_webhooks")
        self._take = load_script(redis, "webhook_take")
        self._settle = load_script(redis, "webhook_settle")
        self._reschedule = load_script(redis, "webhook_reschedule")

    def _call_keys(self, call_id: str) -> list[str]:
        keys = self._keys
        return [keys.webhook_lock(call_id), keys.webhooks(call_id), keys.webhook_sent(call_id), keys.call(call_id)]

    async def claim_due(self, now: int, lease_ms: int, buckets: list[int], limit: int = 50) -> list[tuple[str, int]]:
        """Lease the due calls of `buckets`: (call id, lease score). One script per bucket,
        all in one batch (one round trip; on a cluster one write per shard, at once)."""
        replies = await batch(
            self._redis,
            [(self._claim, [self._keys.webhooks_due_bucket(b)], [now, lease_ms, limit]) for b in buckets],
        )
        claimed: list[tuple[str, int]] = []
        for reply in replies:
            for i in range(0, len(reply), 2):
                claimed.append((reply[i].decode(), int(float(reply[i + 1]))))
        return claimed

    async def take(self, call_id: str, token: str, lock_ms: int) -> Taken | None:
        """The call's events and cursors, under its delivery lock; None: another node has it."""
        reply = await self._take(keys=self._call_keys(call_id), args=[token, lock_ms])
        if reply == 0:
            return None
        events, flat, state = reply
        cursors = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return Taken(events=list(events), cursors=cursors, state=state.decode() if state else "")

    async def settle(
        self, call_id: str, token: str, cursors: dict[str, int], lease: int, next_at: int | None
    ) -> tuple[int, str]:
        """Record the URLs' cursors, let go of the lock, and move the call in the due index
        as reschedule() does, in one round trip (on a cluster, the two shards at once):
        (events in the outbox now, the call's state). Moving it before knowing whether
        events came in meanwhile is safe: each one's ZADD changed the score, so the move
        does not happen and the call stays due."""
        lock, outbox, sent, call = self._call_keys(call_id)
        (length, state), _ = await batch(
            self._redis,
            [
                (self._settle, [lock, sent, outbox, call], [token, orjson.dumps(cursors), self.ttl or 86400]),
                (
                    self._reschedule,
                    [self._keys.webhooks_due(call_id)],
                    [call_id, lease, "" if next_at is None else next_at],
                ),
            ],
        )
        return int(length), state.decode() if state else ""

    async def reschedule(self, call_id: str, lease: int, next_at: int | None) -> bool:
        """Move the call to `next_at` in the due index (None: drop it), if its score is still
        `lease`; False when a newer event moved it (it stays due)."""
        moved = await self._reschedule(
            keys=[self._keys.webhooks_due(call_id)], args=[call_id, lease, "" if next_at is None else next_at]
        )
        return bool(moved)

    async def note_failure(self, url_key: str, record: dict[str, Any]) -> None:
        await self._redis.hset(self._keys.webhook_failures(), url_key, orjson.dumps(record))

    async def clear_failure(self, url_key: str) -> None:
        await self._redis.hdel(self._keys.webhook_failures(), url_key)

    async def failures(self) -> dict[str, dict[str, Any]]:
        """The URLs failing now, for /ops: url key -> what note_failure wrote."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(self._keys.webhook_failures())  # type: ignore[assignment]
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def backlog(self, now: int) -> tuple[int, int]:
        """(calls with events to deliver or to check, of which due now), over every bucket."""

        def count(pipe: Any) -> None:
            for b in range(BUCKETS):
                pipe.zcard(self._keys.webhooks_due_bucket(b))
                pipe.zcount(self._keys.webhooks_due_bucket(b), "-inf", now)

        replies = await batch(self._redis, [], count)
        return sum(replies[0::2]), sum(replies[1::2])
