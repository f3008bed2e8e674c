"""Call history and availability in Redis (issue 14, items 4 and 5). Keys: layout.py.

How a call reaches a user's history, on one Redis and on a Cluster alike:

- **The record**, `{c:<call_id>}:history`, is the call as its history shows it. The call's
  own scripts write it (lua/create_call.lua, lua/transition.lua), in the same atomic step
  as each state, in the call's slot. It is the only place history reads a call's state.
- **The index**, `{u:<user>}:history`, says which calls are the user's, newest first. It
  lives in the user's slot, which on a cluster is another shard than the call's, so no
  script can write both. It is written *before* the call exists instead, in the round
  trip that admits the call (stores/limits.py: the callee's entry by lua/admit_call.lua,
  the caller's beside it). So a call never lacks its entries, whatever node dies when;
  the price is an entry whose call never came to be (refused by the callee's limits, or
  the node gone before the call's script): it points at no record of this user's and is
  skipped when read, and dropped once it is a minute old.

Nothing is written after the call's script, so there is no follow-up to lose. A listing
reads the index in the user's slot, then the records (one batch: a pipeline per shard).

`missed_unseen` is counted from the records of the calls after the user's `seen` mark, at
most UNSEEN_SCAN of them (a badge shows "99+" long before that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from voip.history import Cursor, HistoryEntry, entry
from voip.stores.layout import KeyLayout, batch

# Index entries one request reads at most, so that a history full of strays cannot make
# one request walk all of it; the cursor carries on from there.
SCAN_BUDGET = 500
# Calls after the seen mark whose records are read to count the missed ones.
UNSEEN_SCAN = 200
# An index entry with no record is dropped once it is this old: a younger one may belong
# to a call whose script has not run yet (the index is written first).
STRAY_AGE_MS = 60_000
SEEN = "seen"


class HistoryStore:
    def __init__(self, redis: Redis, keys: KeyLayout, *, retention: int) -> None:
        self._redis = redis
        self._keys = keys
        self.retention = retention  # VOIP_HISTORY_RETENTION, seconds

    async def page(
        self, user: str, *, limit: int, after: Cursor | None, now: int
    ) -> tuple[list[HistoryEntry], Cursor | None]:
        """Up to `limit` of the user's calls, newest first (start time, then call id, both
        descending), after `after`; and where the next page starts (None: no more). A
        cursor is a place in that order, so calls made meanwhile (newer) never shift a
        later page: no call repeats, none is skipped."""
        index = self._keys.history(user)
        found: list[HistoryEntry] = []
        position = after
        examined = 0
        while True:
            wanted = min(limit - len(found), SCAN_BUDGET - examined)
            candidates = await self._candidates(index, position, wanted)
            records = await self.records([call_id for call_id, _ in candidates])
            strays = []
            for (call_id, started_at), record in zip(candidates, records, strict=True):
                examined += 1
                position = Cursor(started_at, call_id)
                shown = entry(call_id, record, user) if record is not None else None
                if shown is not None:
                    found.append(shown)
                elif record is None and started_at < now - STRAY_AGE_MS:
                    strays.append(call_id)
            if strays:
                await self._redis.zrem(index, *strays)
            if len(candidates) < wanted:
                return found, None
            if len(found) == limit or examined >= SCAN_BUDGET:
                return found, position

    async def _candidates(self, index: str, after: Cursor | None, count: int) -> list[tuple[str, int]]:
        if after is None:
            rows: list[tuple[bytes, float]] = await self._redis.zrevrangebyscore(  # type: ignore[assignment]
                index, "+inf", "-inf", start=0, num=count, withscores=True
            )
            return [(call_id.decode(), int(score)) for call_id, score in rows]
        async with self._redis.pipeline(transaction=False) as pipe:
            # The same millisecond, a smaller id: ZRANGE REV orders equal scores by id, descending.
            pipe.zrangebyscore(index, after.started_at, after.started_at)
            pipe.zrevrangebyscore(index, f"({after.started_at}", "-inf", start=0, num=count, withscores=True)
            same, before = await pipe.execute()
        ties = sorted((c.decode() for c in same if c.decode() < after.call_id), reverse=True)
        found = [(call_id, after.started_at) for call_id in ties]
        found += [(call_id.decode(), int(score)) for call_id, score in before]
        return found[:count]

    async def records(self, call_ids: list[str]) -> list[dict[str, Any] | None]:
        """The calls' history records, None where there is none (expired, or never made)."""
        if not call_ids:
            return []
        raw = await batch(self._redis, [], lambda pipe: [pipe.get(self._keys.history_record(c)) for c in call_ids])
        return [orjson.loads(r) if r else None for r in raw]

    async def seen_mark(self, user: str) -> int:
        score = await self._redis.zscore(self._keys.history_seen(user), SEEN)
        return int(score) if score is not None else 0

    async def mark_seen(self, user: str, up_to: int) -> int:
        """Move the user's seen mark to `up_to`, never back (ZADD GT: two devices marking
        at once end at the later mark); returns the mark."""
        key = self._keys.history_seen(user)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {SEEN: up_to}, gt=True)
            pipe.zscore(key, SEEN)
            pipe.expire(key, self.retention)
            _, mark, _ = await pipe.execute()
        return int(mark)

    async def missed_unseen(self, user: str, seen: int, known: dict[str, HistoryEntry] | None = None) -> int:
        """Incoming calls nobody answered, started after `seen`; `known`: entries read
        already (a page), not read again."""
        rows: list[bytes] = await self._redis.zrevrangebyscore(  # type: ignore[assignment]
            self._keys.history(user), "+inf", f"({seen}", start=0, num=UNSEEN_SCAN
        )
        ids = [r.decode() for r in rows]
        known = known or {}
        unread = [c for c in ids if c not in known]
        read = dict(zip(unread, await self.records(unread), strict=True))
        count = 0
        for call_id in ids:
            shown = known.get(call_id)
            if shown is None and (record := read.get(call_id)) is not None:
                shown = entry(call_id, record, user)
            count += shown is not None and shown.missed
        return count


@dataclass(frozen=True, slots=True)
class Availability:
    """`PUT /v1/me/availability`: do-not-disturb (until `until`, ms, or until turned off),
    and what a call to a user in an answered call does (`when_busy`: ring, or reject)."""

    dnd: bool = False
    until: int | None = None
    when_busy: str = "ring"

    def at(self, now: int) -> Availability:
        """As it stands at `now`: a do-not-disturb whose `until` has passed is off."""
        if self.dnd and self.until is not None and now >= self.until:
            return Availability(False, None, self.when_busy)
        return self

    def body(self) -> dict[str, Any]:
        return {"dnd": self.dnd, "until": self.until, "when_busy": self.when_busy}


class AvailabilityStore:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, user: str) -> Availability:
        fields: list[bytes | None] = await self._redis.hmget(  # type: ignore[assignment]
            self._keys.availability(user), ["dnd", "until", "when_busy"]
        )
        dnd, until, when_busy = fields
        return Availability(dnd == b"1", int(until) if until else None, when_busy.decode() if when_busy else "ring")

    async def put(self, user: str, availability: Availability) -> None:
        # lua/admit_call.lua reads these three fields, in the user's slot.
        await self._redis.hset(
            self._keys.availability(user),
            mapping={
                "dnd": "1" if availability.dnd else "0",
                "until": "" if availability.until is None else str(availability.until),
                "when_busy": availability.when_busy,
            },
        )
