"""Every Redis connection of a node is built here: the redis-py pool, the status
endpoint's pipe (voip/redis_pipe.py, voip/redis_cluster_pipe.py) and, through the pool,
the bus's pub/sub.

With `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` set, each of them asks the Sentinels
for the current master whenever it (re)connects, so all three follow a failover
(docs/deploy.md#redis-sentinel). With `REDIS_CLUSTER_NODES`, `client` is redis-py's
cluster client (MOVED and ASK followed, the slot map re-read after a failover), the bus
subscribes through it shard by shard (voip/shards.py), and the status endpoint has a
pipe of its own that follows the slot map (voip/redis_cluster_pipe.py; docs/benchmarks.md
has the figures). Otherwise they all go to `REDIS_URL`.

With TLS on (REDIS_TLS, or a rediss:// REDIS_URL) every one of them speaks TLS: the
cluster's nodes, those it finds later included; the Sentinels (REDIS_SENTINEL_TLS) and
the master they name; the pipes (voip/redis_tls.py, docs/deploy.md#tls-to-redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Connection, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voip import redis_pool
from voip.redis_cluster_pipe import ClusterPipe
from voip.redis_pipe import Address, RedisPipe, StatusPipe
from voip.redis_tls import RedisTLS, TLSConnection, url_context, url_tls_options
from voip.settings import Settings, sentinel_addresses


class ClusterConnection(Connection):
    """A cluster node's connection. When a primary dies under a command, redis-py's
    cluster client can disconnect the connection while the command is being written, and
    the write then fails as an AttributeError on the writer gone (None); under uvloop (the
    deployed server's loop), a writer whose transport was closed a moment before fails as
    RuntimeError ("the handler is closed"): a node past its capacity on a cluster met it
    in a new connection's hand-shake (`python -m bench --scale --redis-cluster`, the SIP
    part), a 500 for the request. Both are a dropped connection: raised as one, the client
    retries it against the new slot map, and what is left over is a 503, never a 500."""

    async def _send_packed_command(self, command: Any) -> None:
        try:
            await super()._send_packed_command(command)
        except AttributeError as exc:
            if self._writer is not None or exc.obj is not None:
                raise
            raise RedisConnectionError("connection closed while the command was written") from exc
        except RuntimeError as exc:
            if self._writer is None or not self._writer.transport.is_closing():
                raise
            raise RedisConnectionError("connection closed while the command was written") from exc


class BlockingSentinelPool(SentinelConnectionPool, redis_pool.QuickCheckout):
    """The Sentinel pool, waiting up to `VOIP_REDIS_POOL_TIMEOUT` for a free connection as
    the pool without Sentinel does. redis-py's own fails at once when every connection is
    busy: 98 of 100 concurrent requests on a pool of 3 were refused with 503."""


class ClusterTLSConnection(ClusterConnection, TLSConnection):
    """A cluster node's connection over TLS."""


class SentinelTLSConnection(SentinelManagedConnection, TLSConnection):
    """A connection to the master (or a replica) the Sentinels name, over TLS."""


@dataclass
class RedisConnections:
    """The node's Redis: `client` (the pool, and the bus's pub/sub through it) and a
    factory for the status pipe, all pointed at the same, current master. `tls` is the
    data nodes' TLS when REDIS_TLS set it (None: plain, or a rediss:// REDIS_URL's own)."""

    client: Redis
    sentinel: Sentinel | None
    settings: Settings
    tls: RedisTLS | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisConnections:
        password = settings.redis_password or None
        if settings.redis_cluster_nodes:
            tls = RedisTLS.from_settings(settings) if settings.redis_tls else None
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
            # later, are built from these shared keyword arguments; the startup nodes
            # were built from them already.
            shared: dict[str, Any] = {"tls": tls} if tls is not None else {}
            connection_class = ClusterTLSConnection if tls is not None else ClusterConnection
            cluster.connection_kwargs.update(connection_class=connection_class, **shared)
            for node in cluster.startup_nodes:
                node.connection_class = connection_class
                node.connection_kwargs.update(shared)
            # RedisCluster offers the commands the stores use; they tell it apart where it
            # matters (stores/layout.py: clustered()).
            return cls(cast(Redis, cluster), None, settings, tls)
        if settings.redis_sentinels:
            made = RedisTLS.from_settings(settings) if settings.redis_tls or settings.redis_sentinel_tls else None
            tls = made if settings.redis_tls else None
            data: dict[str, Any] = {"connection_class": SentinelTLSConnection, "tls": tls} if tls is not None else {}
            # Every pool it hands out (master_for, slave_for) is built with these.
            sentinel = Sentinel([], **data)
            sentinel.sentinels = [
                _sentinel_client(host, port, settings, made if settings.redis_sentinel_tls else None)
                for host, port in sentinel_addresses(settings.redis_sentinels)
            ]
            client = sentinel.master_for(
                settings.redis_sentinel_master,
                connection_pool_class=BlockingSentinelPool,
                password=password,
                **redis_pool.pool_options(settings),
            )
            return cls(client, sentinel, settings, tls)
        options = redis_pool.pool_options(settings)
        if password:
            options["password"] = password  # a password in REDIS_URL wins over this one
        if settings.redis_tls:
            options.update(url_tls_options(settings))  # the URL's ssl_* win over these
        pool = redis_pool.QuickCheckout.from_url(settings.redis_url, **options)
        # from_pool: the client owns its pool, so closing the client closes its connections.
        return cls(Redis.from_pool(pool), None, settings)

    async def master_address(self) -> Address:
        """Where the status pipe connects now: the Sentinels' current master, or REDIS_URL."""
        assert self.sentinel is not None
        host, port = await self.sentinel.discover_master(self.settings.redis_sentinel_master)
        return {"host": host, "port": int(port), "password": self.settings.redis_password or None}

    def status_pipe(self) -> StatusPipe:
        timeout = self.settings.redis_command_timeout
        if self.settings.redis_cluster_nodes:
            return ClusterPipe(
                sentinel_addresses(self.settings.redis_cluster_nodes),
                password=self.settings.redis_password or None,
                timeout=timeout,
                tls=self.tls.context if self.tls is not None else None,
                tls_server_name=self.tls.server_name if self.tls is not None else None,
            )
        if self.sentinel is not None:
            return RedisPipe(
                locate=self.master_address,
                master_only=True,
                timeout=timeout,
                tls=self.tls.context if self.tls is not None else None,
                server_hostname=self.tls.server_name if self.tls is not None else None,
            )
        return RedisPipe(
            self.settings.redis_url,
            password=self.settings.redis_password or None,
            timeout=timeout,
            tls=url_context(self.settings),
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


class SentinelUnreachable(RedisConnectionError):
    """A Sentinel that did not answer, shown with its reason: redis-py's errors show only
    their kind ("network:ConnectionError") in the list it gives when no Sentinel names a
    master, and the node logs that list at start (a wrong CA, a wrong password)."""

    def __repr__(self) -> str:
        return str(self)


class _SentinelClient(Redis):
    """A Sentinel's client, shown by its address in that list."""

    def __repr__(self) -> str:
        options = self.connection_pool.connection_kwargs
        return f"Sentinel {options['host']}:{options['port']}"

    async def sentinel_masters(self) -> Any:
        try:
            return await super().sentinel_masters()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise SentinelUnreachable(str(exc) or type(exc).__name__) from exc


def _sentinel_client(host: str, port: int, settings: Settings, tls: RedisTLS | None) -> Redis:
    """One Sentinel's client. Built here, not from Sentinel's `sentinel_kwargs`: those
    cannot name a connection class. Short timeouts: another Sentinel is asked next."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "password": settings.redis_sentinel_password or None,  # REDIS_PASSWORD is the data nodes'
    }
    if tls is not None:
        options.update(connection_class=TLSConnection, tls=tls.for_sentinels())
    return _SentinelClient.from_pool(ConnectionPool(**options))
