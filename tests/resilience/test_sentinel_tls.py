"""Redis behind Sentinel, on TLS: a master and a replica that serve TLS only (`--port 0`,
`--tls-port`, `--tls-replication yes`) with a password, and three Sentinels that have a
password of their own and listen on a plain and a TLS port. A node given REDIS_SENTINELS,
REDIS_TLS and the two passwords rings, answers and reads a call's status over TLS, the
status pipe included; a node may ask the Sentinels in plain text (REDIS_SENTINEL_TLS=false)
and still reach the master over TLS. A wrong CA or password stops a node at start with one
line that says why; a failover is followed over TLS."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningNode, make_settings, register, start_node, stop_nodes
from tests.redis_tls import Certificates, make_ca, make_certificates, start_up_error
from tests.sentinel import SentinelRedis
from tests.test_status import status
from voip.redis_conn import SentinelTLSConnection
from voip.redis_tls import TLSConnection

pytestmark = pytest.mark.interop

PASSWORD = "data-pass-3"
SENTINEL_PASSWORD = "sentinel-pass-5"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("sentinel-tls"))


@pytest.fixture(scope="module")
def tls_set(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelRedis]:
    redis_set = SentinelRedis(tls=certificates, password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    redis_set.start()
    try:
        yield redis_set
    finally:
        redis_set.stop(keep_logs_in=tmp_path_factory.mktemp("sentinel-tls-logs"))


@pytest.fixture
def nodes(tls_set: SentinelRedis, prefix: str) -> Iterator[list[RunningNode]]:
    running: list[RunningNode] = []
    yield running
    with tls_set.master().client as client:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)


def node_settings(tls_set: SentinelRedis, prefix: str, **overrides: Any) -> Any:
    settings = {**tls_set.settings(), **overrides}
    return make_settings("", prefix, **{name: value for name, value in settings.items() if value is not None})


def tls_connections(running: RunningNode) -> dict[str, list[Any]]:
    """The node's open connections to the Sentinels and to the master, by kind."""
    connections = running.node.connections
    assert connections.sentinel is not None
    sentinels = [c for s in connections.sentinel.sentinels for c in s.connection_pool._available_connections]
    pool = connections.client.connection_pool
    return {"sentinels": sentinels, "master": [*pool._available_connections, *pool._in_use_connections]}


async def test_a_call_behind_tls_sentinels_with_the_status_read_through_the_pipe(
    tls_set: SentinelRedis, prefix: str, nodes: list[RunningNode]
) -> None:
    try:
        for _ in range(2):
            nodes.append(await start_node(node_settings(tls_set, prefix)))
        node_a, node_b = nodes
        caller = await node_a.device("alice", "a1")
        phone = await node_b.device("bob", "b1")
        call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
        await phone.expect("call.incoming", call_id=call_id)
        await phone.request({"type": "call.answer", "call_id": call_id, "sdp": "v=0"})
        assert (await caller.expect("call.answered", call_id=call_id))["device_id"] == "b1"
        code, body = await status(node_b, call_id, device_id="b1")
        assert code == 200, body
        assert (body["state"], body["answered_by_device"]) == ("answered", "b1")

        # Written to the master the Sentinels name (read with the test's own client).
        with tls_set.master().client as master:
            assert master.hget(node_a.node.stores.keys.call(call_id), "state") == b"answered"
        # The verdict came through the pipe, over TLS to the master.
        pipe = node_b.node.status_pipe
        assert pipe is not None and pipe._protocol is not None and pipe._protocol.transport is not None
        assert pipe._protocol.transport.get_extra_info("peername")[1] == tls_set.master_port()
        assert pipe._protocol.transport.get_extra_info("ssl_object") is not None
        # The pool and the Sentinels' clients speak TLS too.
        for running in nodes:
            opened = tls_connections(running)
            assert opened["sentinels"] and opened["master"]
            for connection in opened["master"]:
                assert isinstance(connection, SentinelTLSConnection)
            for connection in opened["sentinels"]:
                assert isinstance(connection, TLSConnection)
            for connection in [*opened["master"], *opened["sentinels"]]:
                if connection.is_connected:
                    assert connection._writer.get_extra_info("ssl_object") is not None
    finally:
        await stop_nodes(nodes)


async def test_plain_text_sentinels_in_front_of_a_tls_master(
    tls_set: SentinelRedis, prefix: str, nodes: list[RunningNode]
) -> None:
    settings = node_settings(tls_set, prefix, redis_sentinels=tls_set.sentinel_setting, redis_sentinel_tls=False)
    assert settings.redis_tls and not settings.redis_sentinel_tls
    try:
        nodes.append(await start_node(settings))
        await register(nodes[0], "bob", "b1")
        code, body = await status(nodes[0], str(uuid.uuid4()), device_id="b1")
        assert code == 404, body  # asked through the pipe, over TLS
        opened = tls_connections(nodes[0])
        assert opened["sentinels"] and all(type(c).__name__ == "Connection" for c in opened["sentinels"])
        assert all(isinstance(c, SentinelTLSConnection) for c in opened["master"])
    finally:
        await stop_nodes(nodes)


@pytest.mark.parametrize(
    ("change", "error"),  # error: a pattern of what the node says
    [
        ("wrong CA", r"Sentinel 127\.0\.0\.1:\d+ - .*certificate verify failed"),
        ("no Sentinel password", r"Sentinel 127\.0\.0\.1:\d+ - .*authenticated"),
        ("wrong Sentinel password", r"Sentinel 127\.0\.0\.1:\d+ - invalid username-password pair"),
        ("no password", "authenticated"),
        ("plain text to TLS Sentinels", r"Sentinel 127\.0\.0\.1:\d+ - .*Connection reset by peer"),
    ],
)
async def test_a_node_that_cannot_speak_to_tls_sentinels_says_why_at_start(
    tls_set: SentinelRedis, tmp_path: Path, prefix: str, change: str, error: str
) -> None:
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    choices: dict[str, dict[str, Any]] = {
        "wrong CA": {"redis_tls_ca_file": str(other_ca)},
        "no Sentinel password": {"redis_sentinel_password": None},
        "wrong Sentinel password": {"redis_sentinel_password": "not-" + SENTINEL_PASSWORD},
        "no password": {"redis_password": None},
        "plain text to TLS Sentinels": {"redis_sentinel_tls": False},
    }
    overrides = choices[change]
    said = await start_up_error(node_settings(tls_set, prefix, **overrides))
    assert re.search(error, said), said
    assert PASSWORD not in said and SENTINEL_PASSWORD not in said


async def test_the_pipe_and_the_pool_follow_a_failover_over_tls(
    tls_set: SentinelRedis, prefix: str, nodes: list[RunningNode]
) -> None:
    # The module's last test: the killed master stays dead.
    try:
        nodes.append(await start_node(node_settings(tls_set, prefix)))
        node = nodes[0]
        await register(node, "bob", "b1")
        assert (await status(node, str(uuid.uuid4()), device_id="b1"))[0] == 404
        old = tls_set.master_port()
        await asyncio.to_thread(tls_set.failover, settle=False)  # SIGKILL the master
        assert tls_set.master_port() != old
        async with asyncio.timeout(10):
            while True:
                if (await status(node, str(uuid.uuid4()), device_id="b1"))[0] == 404:
                    break
                await asyncio.sleep(0.1)
        await register(node, "bob", "b2")  # a write, on the new master
        with tls_set.master().client as master:
            assert master.hexists(node.node.stores.keys.devices("bob"), "b2")
        pipe = node.node.status_pipe
        assert pipe is not None and pipe._protocol is not None and pipe._protocol.transport is not None
        assert pipe._protocol.transport.get_extra_info("peername")[1] == tls_set.master_port()
        assert pipe._protocol.transport.get_extra_info("ssl_object") is not None
    finally:
        await stop_nodes(nodes)
