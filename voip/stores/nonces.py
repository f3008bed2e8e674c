"""Digest nonce counts shared by every node, so a `(nonce, nc)` pair is accepted once.

`sip.digest` verifies everything a header proves by itself; whether its count was used
already is state, kept here in Redis, one key per nonce for as long as the nonce could
still pass:

    sip_nonce:<nonce>   string   the highest nc accepted (TTL: DigestServer.count_ttl)
"""

from __future__ import annotations

from redis.asyncio import Redis

from voip.stores.layout import KeyLayout, load_script


class NonceCounts:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._keys = keys
        self._consume = load_script(redis, "consume_nonce_count")

    async def consume(self, nonce: str, nc: int, ttl: int) -> bool:
        """True once per pair, and only for a count above every one accepted before."""
        return bool(await self._consume(keys=[self._keys.sip_nonce(nonce)], args=[nc, ttl]))
