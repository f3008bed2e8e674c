"""What SIP keeps in Redis for every node: users' HA1s, their phones' bindings, and the
calls ringing them while a push wakes a phone (voip/sipcalls/registrar.py, ringing.py)."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from voip.stores.layout import KeyLayout


class SipStore:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    async def put_ha1s(self, user: str, ha1s: dict[str, str]) -> None:
        """`ha1s`: "<realm>|<algorithm>" -> HA1."""
        # redis-py's mapping has an invariant key type (bytes | str | ...); str keys are valid.
        await self._redis.hset(self._keys.sip_ha1(user), mapping=ha1s)  # type: ignore[arg-type]

    async def ha1(self, user: str, realm: str, algorithm: str) -> bytes | None:
        return cast(bytes | None, await self._redis.hget(self._keys.sip_ha1(user), f"{realm}|{algorithm}"))

    async def bindings(self, user: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.sip_bindings(user)))

    async def binding(self, user: str, device_id: str) -> bytes | None:
        return cast(bytes | None, await self._redis.hget(self._keys.sip_bindings(user), device_id))

    async def put_binding(self, user: str, device_id: str, binding: bytes, ttl: int) -> None:
        """`ttl` (s) applies to the user's whole hash: no binding outlives it unrefreshed."""
        key = self._keys.sip_bindings(user)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, device_id, binding)
            pipe.expire(key, ttl)
            await pipe.execute()

    async def delete_binding(self, user: str, device_id: str) -> None:
        await self._redis.hdel(self._keys.sip_bindings(user), device_id)

    async def add_ringing(self, user: str, call_id: str, call: bytes, ttl_ms: int) -> None:
        key = self._keys.sip_ringing(user)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, call_id, call)
            # GT: a shorter-lived call must not shorten the life of the others' entries.
            pipe.pexpire(key, ttl_ms, gt=True)
            pipe.pexpire(key, ttl_ms, nx=True)
            await pipe.execute()

    async def ringing(self, user: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.sip_ringing(user)))

    async def remove_ringing(self, user: str, *call_ids: str) -> None:
        await self._redis.hdel(self._keys.sip_ringing(user), *call_ids)

    async def claim_fork(self, user: str, call_id: str, device_id: str, ttl_ms: int) -> bool:
        """True once per call and phone, across nodes: this node INVITEs it."""
        return bool(await self._redis.set(self._keys.sip_fork(user, call_id, device_id), b"1", nx=True, px=ttl_ms))
