"""A user's ringing calls, for SIP phones that register while a call rings (RFC 8599: the
push woke the app, which re-REGISTERs). Whichever node takes that REGISTER forks the
INVITE, so what it needs to build one (the caller, the offer) is kept in Redis:

    {u:<user>}:sip_ringing                 hash     call id -> JSON RingingCall
    {u:<user>}:sip_fork:<call>:<device>    string   claim: this phone was INVITEd into this call

Entries are written from the `call.incoming` a node hears for one of the user's phones
and removed on the frame that ends ringing; the deadline bounds each of them anyway.
The claim makes one INVITE per call and phone across nodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from voip.clock import now_ms
from voip.stores import SipStore

# Frames after which a device of the callee has nothing left to ring for.
RINGING_OVER = frozenset(
    {
        "call.answered",
        "call.answered_elsewhere",
        "call.declined",
        "call.cancelled",
        "call.missed",
        "call.failed",
        "call.ended",
    }
)
GRACE_MS = 60_000


@dataclass(frozen=True, slots=True)
class RingingCall:
    call_id: str
    caller: str
    sdp: str | None
    ring_deadline: int  # ms

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> RingingCall:
        return cls(frame["call_id"], frame.get("caller", ""), frame.get("sdp"), int(frame["ring_deadline"]))


class RingingIndex:
    def __init__(self, store: SipStore) -> None:
        self._store = store

    async def add(self, user: str, call: RingingCall) -> None:
        ttl_ms = max(call.ring_deadline - now_ms(), 0) + GRACE_MS
        await self._store.add_ringing(user, call.call_id, orjson.dumps(asdict(call)), ttl_ms)

    async def remove(self, user: str, call_id: str) -> None:
        await self._store.remove_ringing(user, call_id)

    async def calls(self, user: str) -> list[RingingCall]:
        raw = await self._store.ringing(user)
        now = now_ms()
        found = [RingingCall(**orjson.loads(v)) for v in raw.values()]
        stale = [c.call_id for c in found if c.ring_deadline <= now]
        if stale:
            await self._store.remove_ringing(user, *stale)
        return [c for c in found if c.ring_deadline > now]

    async def claim(self, user: str, call: RingingCall, device: str) -> bool:
        ttl_ms = max(call.ring_deadline - now_ms(), 0) + GRACE_MS
        return await self._store.claim_fork(user, call.call_id, device, ttl_ms)
