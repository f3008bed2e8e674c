"""A cluster node's connection that the client disconnects while a command is being
written (a primary dying under it) fails as a dropped connection, which the cluster
client retries and a node answers 503, not as an AttributeError or, under uvloop, a
RuntimeError (a 500)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import make_settings, register, start_node
from voip.redis_conn import ClusterConnection, RedisConnections
from voip.redis_server import PrivateRedis


async def test_a_write_on_a_connection_closed_under_it_is_a_dropped_connection(redis_url: str) -> None:
    address = urlparse(redis_url)
    connection = ClusterConnection(host=address.hostname or "127.0.0.1", port=address.port or 6379, socket_timeout=2)
    await connection.connect()
    await connection.send_command("PING")
    assert await connection.read_response() in (b"PONG", "PONG")
    await connection.disconnect()  # as the cluster client does when the node fails
    with pytest.raises(RedisConnectionError):
        await connection._send_packed_command(connection.pack_command("PING"))


def test_a_write_on_a_transport_closed_under_it_is_a_dropped_connection_under_uvloop(redis_url: str) -> None:
    """uvloop, the deployed server's loop, refuses a write on a closed transport with a
    RuntimeError where asyncio's own loop drops it silently."""

    async def write_after_close() -> None:
        address = urlparse(redis_url)
        host, port = address.hostname or "127.0.0.1", address.port or 6379
        connection = ClusterConnection(host=host, port=port, socket_timeout=2)
        await connection.connect()
        assert connection._writer is not None
        connection._writer.transport.close()  # as a disconnect elsewhere does, the writer still set
        await asyncio.sleep(0.05)  # closed, not only closing
        try:
            with pytest.raises(RedisConnectionError):
                await connection._send_packed_command(connection.pack_command("PING"))
        finally:
            await connection.disconnect()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(write_after_close())


async def test_the_cluster_client_builds_every_node_connection_as_a_cluster_connection() -> None:
    connections = RedisConnections.from_settings(
        make_settings("", "t", redis_cluster_nodes="127.0.0.1:7000,127.0.0.1:7001")
    )
    cluster = connections.client
    assert cluster.connection_kwargs["connection_class"] is ClusterConnection  # type: ignore[attr-defined]
    assert cluster.nodes_manager.connection_kwargs is cluster.connection_kwargs  # type: ignore[attr-defined]
    assert [node.connection_class for node in cluster.startup_nodes] == [ClusterConnection] * 2  # type: ignore[attr-defined]
    await connections.aclose()


async def test_a_stopped_node_leaves_no_connection_open_on_redis(tmp_path: Any) -> None:
    """Closing the node's client closes its pool: a node stopped inside a process that
    goes on (tests, the ghost bench's killed nodes) must not hold its connections until
    Redis refuses everyone with "max number of clients reached"."""
    with PrivateRedis() as server:
        probe = redis.Redis(unix_socket_path=str(server.socket))
        running = await start_node(make_settings(server.url, "conn-test:"))
        alice = await running.device("alice", "a-phone")
        await register(running, "bob", "b-phone")
        await alice.request({"type": "call.start", "callee": "bob"})
        assert len(probe.client_list()) > 2
        await alice.socket.close()
        await running.stop()
        assert [c["cmd"] for c in probe.client_list()] == ["client|list"]
        probe.close()
