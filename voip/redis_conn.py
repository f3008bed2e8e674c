"""Every Redis connection of a node is built here: the redis-py pool, the status
endpoint's pipe (voip/redis_pipe.py) and, through the pool, the bus's pub/sub.

With `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` set, each of them asks the Sentinels
for the current master whenever it (re)connects, so all three follow a failover
(docs/deploy.md#redis-sentinel). Otherwise they all go to `REDIS_URL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff

from voip.redis_pipe import Address, RedisPipe
from voip.settings import Settings, sentinel_addresses


def pool_options(settings: Settings) -> dict[str, Any]:
    """Keyword options of the node's one redis-py pool, whether Sentinel-managed or not.
    Bounds and health checks of the pool belong here, so both kinds get them."""
    return {"max_connections": 256}


def _reconnect_options() -> dict[str, Any]:
    # redis-py's default backs off 1, 2, 4 s between reconnects: the bus came back 1.2 s
    # after a new master was named. Short steps follow a failover within ~0.3 s.
    return {"retry": Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.05), 3)}


@dataclass
class RedisConnections:
    """The node's Redis: `client` (the pool, and the bus's pub/sub through it) and a
    factory for the status pipe, all pointed at the same, current master."""

    client: Redis
    sentinel: Sentinel | None
    settings: Settings

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> "RedisConnections":
        options = {**_reconnect_options(), **pool_options(settings), **options}
        password = settings.redis_password or None
        if settings.redis_sentinels:
            # Sentinels are asked without a password: REDIS_PASSWORD is the data nodes'.
            sentinel = Sentinel(
                sentinel_addresses(settings.redis_sentinels),
                sentinel_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
            )
            client = sentinel.master_for(settings.redis_sentinel_master, password=password, **options)
            return cls(client, sentinel, settings)
        if password:
            options["password"] = password  # a password in REDIS_URL wins over this one
        return cls(Redis.from_url(settings.redis_url, **options), None, settings)

    async def master_address(self) -> Address:
        """Where the status pipe connects now: the Sentinels' current master, or REDIS_URL."""
        assert self.sentinel is not None
        host, port = await self.sentinel.discover_master(self.settings.redis_sentinel_master)
        return {"host": host, "port": int(port), "password": self.settings.redis_password or None}

    def status_pipe(self) -> RedisPipe:
        if self.sentinel is not None:
            return RedisPipe(locate=self.master_address, master_only=True)
        return RedisPipe(self.settings.redis_url, password=self.settings.redis_password or None)

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()
