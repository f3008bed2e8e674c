"""The node's Redis pool, and which errors mean "Redis is unavailable right now".

A request that finds every connection busy waits, up to `VOIP_REDIS_POOL_TIMEOUT`, then
gets 503 with `Retry-After`: never a 500 (`MaxConnectionsError` was). A connection idle
for a while is pinged before it is handed out, and a command that finds its connection
dropped (Redis restarted) reconnects and goes once more, so a stale socket left in the
pool by a restart never reaches a caller.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from voip.settings import Settings

# Seconds a pooled connection may sit idle before it is pinged on checkout.
HEALTH_CHECK_INTERVAL = 5

# Errors that say nothing about the request and everything about Redis: the answer is 503.
# Builtin ConnectionError and TimeoutError come from the status endpoint's own pipe.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # refused, dropped, no pooled connection in time, loading
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica, during a failover
    # Redis at its maxmemory with noeviction (docs/deploy.md): writes are refused until
    # memory is freed or raised. Nothing is lost; the request may be tried again.
    redis.exceptions.OutOfMemoryError,
    # The cluster client gave up on a slot (CLUSTERDOWN, or redirections without end:
    # redis-py 8.1 sends ASKING and the redirected command on two pooled connections, so
    # a key already moved in a migrating slot loops MOVED/ASK until "TTL exhausted").
    redis.exceptions.ClusterError,
    ConnectionError,
    TimeoutError,
)


def connection_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every redis-py connection of a node, in any kind of pool
    (a Sentinel-managed one included)."""
    return {
        "socket_connect_timeout": settings.redis_command_timeout,
        "socket_timeout": settings.redis_command_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        # One reconnect and resend on a dropped connection; a timeout is not retried,
        # since the command may have run. One, not more: each try against a Redis that
        # accepts connections but answers nothing (stopped, swapping) costs a command
        # timeout, and the request must get its 503 in bounded time.
        "retry": Retry(
            ExponentialBackoff(cap=0.5, base=0.05), retries=1, supported_errors=(redis.exceptions.ConnectionError,)
        ),
    }


def pool_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `BlockingConnectionPool`: the connections' options, its size,
    and how long a request waits for a free connection."""
    return {
        "max_connections": settings.redis_pool_size,
        "timeout": settings.redis_pool_timeout,
        **connection_options(settings),
    }


class QuickCheckout(BlockingConnectionPool):
    """redis-py's blocking pool, whose checkout takes an idle connection at once when
    nobody is waiting for one. redis-py's own goes through its condition, a timeout and
    its observability hooks for every command: about a third of a round trip's CPU
    (docs/benchmarks.md#full-sip-calls-issue-12). With anyone waiting, or in redis-py's
    maintenance mode, the checkout is redis-py's, so a waiter keeps its turn."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        # A Python without Condition._waiters: always redis-py's way.
        waiting = getattr(self._condition, "_waiters", True)
        if not self._available_connections or waiting or getattr(self, "_in_maintenance", False):
            return await super().get_connection()  # type: ignore[no-untyped-call]  # redis-py's, untyped
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection
