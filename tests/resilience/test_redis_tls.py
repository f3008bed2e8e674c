"""`rediss://`, a password and timeouts in REDIS_URL reach every connection of a node: the
pool, the bus through it, and the status endpoint's own pipe (voip/redis_pipe.py), against
a real redis-server on a TLS port with a CA made for the test."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

from tests.conftest import CLIENT_LIMITS, SECRET, make_settings, register, start_node, stop_nodes
from tests.ports import free_port
from tests.redis_process import RedisProcess
from tests.redis_tls import Certificates, make_ca, make_certificates, tls_options
from tests.test_status import ringing_call, status
from voip.redis_pipe import RedisPipe

pytestmark = pytest.mark.interop

SCRIPT = "return {KEYS[1], ARGV[1]}"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


def tls_redis(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, password: str = ""
) -> tuple[RedisProcess, str]:
    """A redis-server with a TLS port, and the `rediss://` URL that trusts its CA."""
    port, options = tls_options(certificates)
    server = redis_process(*options, password=password)
    auth = f":{password}@" if password else ""
    return server, f"rediss://{auth}127.0.0.1:{port}/0?ssl_ca_certs={certificates.ca}"


async def test_a_node_on_rediss_answers_the_status_endpoint_through_the_pipe_and_a_call_works(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, prefix: str
) -> None:
    server, url = tls_redis(redis_process, certificates)
    node = await start_node(make_settings(url, prefix))
    try:
        call_id, caller, phone, _ = await ringing_call(node)
        await phone.request({"type": "call.answer", "call_id": call_id})
        await caller.expect("call.answered", call_id=call_id)
        code, body = await status(node, call_id, device_id="b1")
        assert code == 200, body
        assert (body["state"], body["answered_by_device"]) == ("answered", "b1")
        # The verdict came through the pipe, and the pipe speaks TLS to the TLS port.
        pipe = node.node.status_pipe
        assert pipe is not None and pipe._protocol is not None and pipe._protocol.transport is not None
        assert pipe._protocol.transport.get_extra_info("ssl_object") is not None
        plain = aioredis.Redis(port=server.port)
        try:
            assert await plain.dbsize() > 0  # the call is in this server
        finally:
            await plain.aclose()
    finally:
        await stop_nodes([node])


async def test_the_pipe_checks_the_servers_certificate(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, tmp_path: Path
) -> None:
    _, url = tls_redis(redis_process, certificates)
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    trusting = RedisPipe(url)
    wrong = RedisPipe(url.replace(str(certificates.ca), str(other_ca)))
    plain = RedisPipe(url.replace("rediss://", "redis://"), timeout=1)
    try:
        assert await trusting.evalsha(SHA, SCRIPT, ["k"], ["v"]) == [b"k", b"v"]
        with pytest.raises(ConnectionError, match="certificate verify failed"):
            await wrong.evalsha(SHA, SCRIPT, ["k"], ["v"])
        with pytest.raises((ConnectionError, TimeoutError)):  # plain text to a TLS port
            await plain.evalsha(SHA, SCRIPT, ["k"], ["v"])
    finally:
        for pipe in (trusting, wrong, plain):
            pipe.close()


def test_a_wrong_ca_stops_the_node_at_start_up_with_a_clear_error(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, tmp_path: Path, prefix: str
) -> None:
    _, url = tls_redis(redis_process, certificates)
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    env = {
        **os.environ,
        "REDIS_URL": url.replace(str(certificates.ca), str(other_ca)),
        "VOIP_REDIS_PREFIX": prefix,
        "VOIP_JWT_SECRET": SECRET,
        "PORT": str(free_port()),
    }
    for variable in ("APNS_KEY_FILE", "APNS_ENDPOINT", "VOIP_CONFIG", "SIP_ENABLED"):
        env.pop(variable, None)
    finished = subprocess.run(
        [sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    output = (finished.stdout + finished.stderr).decode(errors="replace")
    assert finished.returncode != 0, output
    events = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    [unreachable] = [e for e in events if e["event"] == "node.redis_unreachable"]
    assert "certificate verify failed" in unreachable["error"], unreachable


async def test_a_password_and_a_username_in_the_url_reach_the_pipe(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, prefix: str
) -> None:
    server, url = tls_redis(redis_process, certificates, password="s3cret")
    admin = aioredis.Redis(port=server.port, password="s3cret")
    await admin.acl_setuser("status", enabled=True, passwords=["+pw-of-status"], keys=["*"], commands=["+@all"])
    await admin.aclose()
    pipes = {
        "none": RedisPipe(url.replace(":s3cret@", "")),
        "password": RedisPipe(url),
        "user": RedisPipe(url.replace(":s3cret@", "status:pw-of-status@")),
        "setting": RedisPipe(url.replace(":s3cret@", ""), password="s3cret"),  # REDIS_PASSWORD
    }
    try:
        with pytest.raises(AuthenticationError, match="uthentication required"):
            await pipes["none"].evalsha(SHA, SCRIPT, ["k"], ["v"])
        for name in ("password", "user", "setting"):
            assert await pipes[name].evalsha(SHA, SCRIPT, [name], ["v"]) == [name.encode(), b"v"]
    finally:
        for pipe in pipes.values():
            pipe.close()

    node = await start_node(make_settings(url, prefix))
    try:
        await register(node, "bob", "b1")
        code, body = await status(node, str(uuid.uuid4()), device_id="b1")
        assert code == 404, body
        assert node.node.status_pipe is not None and node.node.status_pipe._protocol is not None
    finally:
        await stop_nodes([node])


async def test_a_socket_timeout_in_the_url_bounds_the_pipe_on_a_paused_redis(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, prefix: str
) -> None:
    server, url = tls_redis(redis_process, certificates)
    # The node's own timeout is far longer: only the URL's can make the answer come in time.
    url += "&socket_timeout=0.5&socket_connect_timeout=0.5"
    node = await start_node(make_settings(url, prefix, redis_command_timeout=30, redis_pool_timeout=0.5))
    fresh = RedisPipe(url, timeout=30)
    try:
        await register(node, "bob", "b1")
        assert (await status(node, str(uuid.uuid4()), device_id="b1"))[0] == 404  # the pipe is connected
        async with httpx.AsyncClient(base_url=node.base_url, timeout=60, limits=CLIENT_LIMITS) as http:
            server.pause()  # SIGSTOP: the connection stays open, nothing answers
            try:
                started = time.monotonic()
                response = await http.get(
                    f"/v1/calls/{uuid.uuid4()}/status",
                    headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"},
                )
                elapsed = time.monotonic() - started
                # A new connection: TCP is accepted by the kernel, the TLS handshake never ends.
                connect_started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await fresh.evalsha(SHA, SCRIPT, ["k"], ["v"])
                connect_elapsed = time.monotonic() - connect_started
            finally:
                server.resume()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        assert elapsed < 2.5, elapsed
        assert connect_elapsed < 2.5, connect_elapsed
        assert (await status(node, str(uuid.uuid4()), device_id="b1"))[0] == 404  # and it comes back
    finally:
        fresh.close()
        await stop_nodes([node])


async def test_redis_tls_ca_file_serves_a_rediss_url_that_names_no_ca(
    redis_process: Callable[..., RedisProcess], certificates: Certificates, prefix: str
) -> None:
    _, url = tls_redis(redis_process, certificates)
    bare = url.split("?", 1)[0]  # rediss://127.0.0.1:<port>/0: only the system's CAs would be trusted
    node = await start_node(make_settings(bare, prefix, redis_tls_ca_file=str(certificates.ca)))
    try:
        await register(node, "bob", "b1")  # the pool
        code, body = await status(node, str(uuid.uuid4()), device_id="b1")  # the pipe
        assert code == 404, body
        pipe = node.node.status_pipe
        assert pipe is not None and pipe._protocol is not None and pipe._protocol.transport is not None
        assert pipe._protocol.transport.get_extra_info("ssl_object") is not None
        assert node.node.connections.client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(certificates.ca)
    finally:
        await stop_nodes([node])
