"""Every Redis connection of a node is built here: the redis-py pool, the status
endpoint's pipe (voip/redis_pipe.py) and, through the pool, the bus's pub/sub.

With `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` set, each of them asks the Sentinels
for the current master whenever it (re)connects, so all three follow a failover
(docs/deploy.md#redis-sentinel). With `REDIS_CLUSTER_NODES`, `client` is redis-py's
cluster client (MOVED and ASK followed, the slot map re-read after a failover), the bus
subscribes through it shard by shard (voip/shards.py), and the status endpoint uses it
too: no hand-written pipe (docs/benchmarks.md has the figures). Otherwise they all go to
`REDIS_URL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from voip import redis_pool
from voip.redis_pipe import Address, RedisPipe
from voip.settings import Settings, sentinel_addresses


class ClusterConnection(Connection):
    """A cluster node's connection. When a primary dies under a command, redis-py's
    cluster client can disconnect the connection while the command is being written, and
    the write then fails as an AttributeError on the writer gone (None). That is a dropped
    connection: raised as one, the client retries it against the new slot map, and what
    is left over is a 503, never a 500."""

    async def _send_packed_command(self, command: Any) -> None:
        try:
            await super()._send_packed_command(command)
        except AttributeError as exc:
            if self._writer is not None or exc.obj is not None:
                raise
            raise RedisConnectionError("connection closed while the command was written") from exc


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel pool, waiting up to `VOIP_REDIS_POOL_TIMEOUT` for a free connection as
    the pool without Sentinel does. redis-py's own fails at once when every connection is
    busy: 98 of 100 concurrent requests on a pool of 3 were refused with 503."""


@dataclass
class RedisConnections:
    """The node's Redis: `client` (the pool, and the bus's pub/sub through it) and a
    factory for the status pipe, all pointed at the same, current master."""

    client: Redis
    sentinel: Sentinel | None
    settings: Settings

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisConnections:
        password = settings.redis_password or None
        if settings.redis_cluster_nodes:
            options = redis_pool.connection_options(settings)
            cluster = RedisCluster(
                startup_nodes=[
                    ClusterNode(host, port) for host, port in sentinel_addresses(settings.redis_cluster_nodes)
                ],
                password=password,
                max_connections=settings.redis_pool_size,
                **{k: v for k, v in options.items() if k != "retry"},
            )
            # RedisCluster takes no connection class: its nodes, and the ones it finds
            # later, are built from these shared keyword arguments.
            cluster.connection_kwargs["connection_class"] = ClusterConnection
            for node in cluster.startup_nodes:
                node.connection_class = ClusterConnection
            # RedisCluster offers the commands the stores use; they tell it apart where it
            # matters (stores/layout.py: clustered()).
            return cls(cast(Redis, cluster), None, settings)
        if settings.redis_sentinels:
            # Sentinels are asked without a password: REDIS_PASSWORD is the data nodes'.
            sentinel = Sentinel(
                sentinel_addresses(settings.redis_sentinels),
                sentinel_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
            )
            client = sentinel.master_for(
                settings.redis_sentinel_master,
                connection_pool_class=BlockingSentinelPool,
                password=password,
                **redis_pool.pool_options(settings),
            )
            return cls(client, sentinel, settings)
        options = redis_pool.pool_options(settings)
        if password:
            options["password"] = password  # a password in REDIS_URL wins over this one
        pool = BlockingConnectionPool.from_url(settings.redis_url, **options)
        return cls(Redis(connection_pool=pool), None, settings)

    async def master_address(self) -> Address:
        """Where the status pipe connects now: the Sentinels' current master, or REDIS_URL."""
        assert self.sentinel is not None
        host, port = await self.sentinel.discover_master(self.settings.redis_sentinel_master)
        return {"host": host, "port": int(port), "password": self.settings.redis_password or None}

    def status_pipe(self) -> RedisPipe | None:
        """None on a cluster: the status script goes through the cluster client."""
        if self.settings.redis_cluster_nodes:
            return None
        if self.sentinel is not None:
            return RedisPipe(locate=self.master_address, master_only=True, timeout=self.settings.redis_command_timeout)
        return RedisPipe(
            self.settings.redis_url,
            password=self.settings.redis_password or None,
            timeout=self.settings.redis_command_timeout,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()
