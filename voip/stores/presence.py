"""Which node holds each device right now (sockets and SIP bindings), with an expiry
that the holding node's heartbeat renews (voip/presence.py)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from voip.clock import now_ms
from voip.stores.layout import KeyLayout, Scripted, batch, load_script


class PresenceStore:
    def __init__(self, redis: Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys
        self._set = load_script(redis, "presence_set")
        self._clear = load_script(redis, "presence_clear")

    async def set(self, user_id: str, device_id: str, node: str, ttl_ms: int) -> None:
        now = now_ms()
        await self._set(keys=[self._keys.presence(user_id)], args=[now, device_id, f"{node}|{now + ttl_ms}"])

    async def renew(self, held: dict[str, list[str]], node: str, ttl_ms: int) -> None:
        """One node's heartbeat: every device it holds (user -> device ids), in one pipeline."""
        now = now_ms()
        value = f"{node}|{now + ttl_ms}"
        scripts: list[Scripted] = []
        for user_id, devices in held.items():
            args: list[Any] = [now]
            for device_id in devices:
                args += [device_id, value]
            scripts.append((self._set, [self._keys.presence(user_id)], args))
        await batch(self._redis, scripts)

    async def clear(self, user_id: str, device_id: str, node: str) -> None:
        await self._clear(keys=[self._keys.presence(user_id)], args=[device_id, node, now_ms()])


def online_devices(presence: dict[bytes, bytes]) -> set[str]:
    """The devices of a presence hash whose holder's heartbeat has not run out."""
    now = now_ms()
    return {device.decode() for device, value in presence.items() if int(value.decode().rsplit("|", 1)[1]) > now}
