"""Digest nonce counts shared by every node, so a `(nonce, nc)` pair is accepted once.

`sip.digest` verifies everything a header proves by itself; whether its count was used
already is state, kept here in Redis, one key per nonce for as long as the nonce could
still pass:

    sip_nonce:<nonce>   string   the highest nc accepted (TTL: DigestServer.count_ttl)
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis


class NonceCounts:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.prefix = prefix
        script = resources.files("voip").joinpath("lua", "consume_nonce_count.lua").read_text()
        self._consume = redis.register_script(script)

    def key(self, nonce: str) -> str:
        return f"{self.prefix}sip_nonce:{nonce}"

    async def consume(self, nonce: str, nc: int, ttl: int) -> bool:
        """True once per pair, and only for a count above every one accepted before."""
        return bool(await self._consume(keys=[self.key(nonce)], args=[nc, ttl]))
