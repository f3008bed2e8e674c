"""Operators' listing of calls, newest first, from a sorted set of call ids scored by
their creation time (ms).

Why an index and not SCAN over `{c:*}:call`: SCAN walks every key in the database (and,
in Redis Cluster, every shard separately), in hash order, so a "last hour, newest first"
page costs as much as the whole keyspace and cannot be ordered. The index is written by
`CallStore.create` (voip/stores/calls.py), in the same pipeline as the ring deadline
(it lives in another slot than the call, so it cannot be inside the create script). It is not maintained from
the ops feed: pub/sub is fire-and-forget, an index fed from it would lose calls whenever
no node listens.

Entries outlive nothing: the create path trims entries older than any call can live,
and ids whose call has expired are removed here when a listing meets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voip.calls import CallState
from voip.stores import OpsStore

# A listing reads at most this many index entries, so that a filter that matches little
# cannot turn one request into a walk of the whole day; the cursor carries on from there.
SCAN_BUDGET = 2000
BATCH = 200
INT_FIELDS = ("created_at", "ring_deadline", "answered_at", "ended_at", "first_ringing_at")


class BadCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Position:
    """Where a listing stopped: the last index entry it examined."""

    created_at: int
    call_id: str

    def encode(self) -> str:
        return f"{self.created_at}:{self.call_id}"

    @classmethod
    def decode(cls, cursor: str) -> Position:
        score, _, call_id = cursor.partition(":")
        if not (score.isascii() and score.isdigit()) or len(score) > 16 or not call_id or len(call_id) > 64:
            raise BadCursor("cursor: not one this API returned")
        return cls(int(score), call_id)


@dataclass(frozen=True, slots=True)
class CallFilter:
    states: frozenset[CallState] = frozenset()
    user: str = ""
    since: int | None = None
    until: int | None = None

    def matches(self, call: dict[str, Any]) -> bool:
        if self.states and call["state"] not in self.states:
            return False
        return not self.user or self.user in (call["caller_user"], call["callee_user"])


def call_view(call_id: str, raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A call hash as operators see it: every field, numbers as numbers."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    view: dict[str, Any] = {
        "call_id": call_id,
        "state": fields["state"],
        "caller_user": fields.get("caller_user", ""),
        "caller_device": fields.get("caller_device", ""),
        "caller_name": fields.get("caller_name") or None,
        "callee_user": fields.get("callee_user", ""),
        "origin_node": fields.get("origin_node", ""),
        "answered_by_device": fields.get("answered_by_device") or None,
        "ended_by": fields.get("ended_by") or None,
    }
    for name in INT_FIELDS:
        value = fields.get(name)
        view[name] = int(value) if value else None
    return view


def _last(batch: list[tuple[str, int]], default: Position | None) -> Position | None:
    return Position(batch[-1][1], batch[-1][0]) if batch else default


class CallIndex:
    def __init__(self, store: OpsStore) -> None:
        self._store = store

    async def page(
        self, where: CallFilter, *, limit: int, after: Position | None = None
    ) -> tuple[list[dict[str, Any]], Position | None]:
        """Up to `limit` matching calls, newest first, and where to carry on (None: done)."""
        found: list[dict[str, Any]] = []
        position = after
        examined = 0
        while True:
            wanted = min(BATCH, SCAN_BUDGET - examined)
            batch = await self._entries(where, position, wanted)
            calls = await self._load([call_id for call_id, _ in batch]) if batch else []
            gone = []
            for (call_id, created_at), raw in zip(batch, calls, strict=True):
                examined += 1
                position = Position(created_at, call_id)
                if not raw:
                    gone.append(call_id)
                elif where.matches(call := call_view(call_id, raw)):
                    found.append(call)
                    if len(found) == limit:
                        break
            if gone:  # expired with their retention: the index lets go of them too
                await self._store.unindex(gone)
            exhausted = len(batch) < wanted and position == _last(batch, position)
            if exhausted:
                return found, None
            if len(found) == limit or examined >= SCAN_BUDGET:
                return found, position

    async def _entries(self, where: CallFilter, after: Position | None, count: int) -> list[tuple[str, int]]:
        floor: int | str = where.since if where.since is not None else "-inf"
        entries: list[tuple[str, int]] = []
        if after is None:
            ceiling: int | str = where.until if where.until is not None else "+inf"
        else:
            # Same millisecond, smaller id: ZRANGE REV orders equal scores by id, descending.
            same = await self._store.indexed_at(after.created_at)
            entries = [(call_id, after.created_at) for call_id in same if call_id < after.call_id]
            entries.sort(reverse=True)
            entries = entries[:count]
            ceiling = f"({after.created_at}"
        if len(entries) < count:
            entries += await self._store.indexed_before(ceiling, floor, count - len(entries))
        return entries

    async def _load(self, call_ids: list[str]) -> list[dict[bytes, bytes]]:
        return await self._store.calls(call_ids)
