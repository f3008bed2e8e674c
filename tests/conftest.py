"""Shared fixtures: a real Redis (REDIS_URL, else a private redis-server), and real nodes
served by uvicorn on loopback, each test under a key prefix of its own.

A module marked `on_cluster_too` runs each of its tests twice: on that one Redis
(`[redis]`) and on a real Redis Cluster (`[cluster]`, marked interop), the same test code.
The `backend` fixture says which; `node_factory`, `node` and `redis` follow it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import structlog
import uvicorn
import websockets
from redis.asyncio.cluster import ClusterNode, RedisCluster

from apnsim import APNsSimulator
from fcmsim import FCMSimulator
from tests import interop
from tests.redis_cluster import LocalCluster
from tests.redis_process import RedisProcess
from voip.app import create_app
from voip.auth import Authenticator
from voip.node import Node, NodeParts
from voip.redis_server import PrivateRedis
from voip.settings import Settings, load_settings
from voip.ws_protocol import LeanWebSocketProtocol

# In-process nodes log through structlog's development renderer. Its default, rich's
# traceback with every frame's locals, takes a second or more of CPU per logged error
# with a traceback, holding the event loop while the tests measure it: plain tracebacks.
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.dev.set_exc_info,
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    interop.running(item)
    try:
        return (yield)
    finally:
        interop.running(None)


SECRET = "test-secret-" + "x" * 32
BUNDLE = "com.example.caller"
# A node closes a connection idle for VOIP_HTTP_KEEP_ALIVE (5 s); httpx keeps one for 5 s
# too. A request that reuses a connection just as the node closes it fails with ReadError,
# so test clients let theirs go well before the node does.
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=1.0)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    with PrivateRedis() as server:
        yield server.url


@pytest.fixture
async def apns(tmp_path: Path, running_nodes: list[RunningNode]) -> AsyncIterator[tuple[APNsSimulator, dict[str, str]]]:
    """An APNs simulator, and the APNS_* settings that point a node at it. The nodes
    stop before it does, whichever fixture a test named first: a node stopping waits
    for its pushes in flight (up to VOIP_DRAIN_SECONDS), and a push to a simulator
    that is gone only retries until its deadline."""
    async with APNsSimulator(tmp_path / "apns") as sim:
        key = sim.create_key("TEAM000001", "KEY0000001")
        key_file = tmp_path / "AuthKey.p8"
        key_file.write_text(key.private_pem)
        yield (
            sim,
            {
                "apns_key_file": str(key_file),
                "apns_key_id": key.key_id,
                "apns_team_id": key.team_id,
                "apns_bundle_id": BUNDLE,
                "apns_endpoint": sim.endpoint,
                "apns_ca_file": str(sim.ca_file),
            },
        )
        await stop_nodes(running_nodes)


@pytest.fixture
async def fcm(tmp_path: Path, running_nodes: list[RunningNode]) -> AsyncIterator[tuple[FCMSimulator, dict[str, str]]]:
    """An FCM simulator on loopback, and the FCM_* settings that point a node at it: a
    service-account key file it trusts. The nodes stop before it does (see `apns`)."""
    async with FCMSimulator() as sim:
        yield sim, fcm_settings(sim, tmp_path)
        await stop_nodes(running_nodes)


@pytest.fixture
async def fcm_tls(
    tmp_path: Path, running_nodes: list[RunningNode]
) -> AsyncIterator[tuple[FCMSimulator, dict[str, str]]]:
    """`fcm` over TLS, as Google serves it: https for `messages:send` and the key's
    `token_uri`, and FCM_CA_FILE the simulator's own CA."""
    async with FCMSimulator(tls=True, directory=tmp_path / "fcm-tls") as sim:
        yield sim, {**fcm_settings(sim, tmp_path), "fcm_ca_file": sim.ca_file}
        await stop_nodes(running_nodes)


def fcm_settings(sim: FCMSimulator, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "fcm-service-account.json"
    key_file.write_text(orjson.dumps(sim.create_service_account("test-project")).decode())
    return {
        "fcm_credentials_file": str(key_file),
        "fcm_project_id": "test-project",
        "fcm_endpoint": sim.endpoint,
    }


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("on_cluster_too"):
        cluster = pytest.param("cluster", marks=pytest.mark.interop)
        metafunc.parametrize("backend", ["redis", cluster], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which Redis this test's nodes use: "redis" (one server) or "cluster"."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster for every test on the "cluster" backend, each under its own prefix.
    They only use it: the tests that kill, restart or reshard a cluster have their
    module's own (`redis_cluster`)."""
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop(keep_logs_in=tmp_path_factory.mktemp("shared-cluster-logs"))


@pytest.fixture
def redis_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that point a node at this test's Redis: REDIS_URL or REDIS_CLUSTER_NODES."""
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("shared_cluster")
        return {"redis_url": "", "redis_cluster_nodes": cluster.startup_nodes}
    return {"redis_url": request.getfixturevalue("redis_url")}


@pytest.fixture
async def redis(redis_settings: dict[str, str], prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of this test's Redis; the test's keys are deleted afterwards (on a cluster,
    from every primary)."""
    client: aioredis.Redis
    if nodes := redis_settings.get("redis_cluster_nodes"):
        addresses = [address.rsplit(":", 1) for address in nodes.split(",")]
        # RedisCluster has the commands the tests use on one Redis, as in voip/redis_conn.py.
        cluster = await RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in addresses]).initialize()
        client = cast(aioredis.Redis, cluster)
    else:
        client = aioredis.Redis.from_url(redis_settings["redis_url"])
    yield client
    async for key in client.scan_iter(match=f"{prefix}*", count=500):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(SECRET)


def make_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    return load_settings(
        redis_url=redis_url,
        redis_prefix=prefix,
        jwt_secret=SECRET,
        node_id=overrides.pop("node_id", f"node-{uuid.uuid4().hex[:6]}"),
        **overrides,
    )


@dataclass
class RunningNode:
    node: Node
    server: uvicorn.Server
    task: asyncio.Task[None]
    base_url: str
    auth: Authenticator
    clients: list[Any] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/ws"

    def http(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.base_url, timeout=10, limits=CLIENT_LIMITS)
        self.clients.append(client)
        return client

    async def timeline(
        self, call_id: str, until: Callable[[list[dict[str, Any]]], bool] = lambda _: True, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """The call's timeline once `until` holds of it (or as it is after `timeout`): the
        node writes `delivered` and `sip` entries in batches (voip/delivery_log.py)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.node.deliveries.flush()
            entries = await self.node.stores.calls.timeline(call_id)
            if until(entries) or loop.time() >= deadline:
                return entries
            await asyncio.sleep(0.02)

    async def device(self, user: str, device: str, *, name: str | None = None, **connect: Any) -> DeviceClient:
        """`name`: the token's claim `name`, the display name the app's backend gives the user."""
        token = self.auth.mint(user, "device", name=name)
        socket = await websockets.connect(
            f"{self.ws_url}?device_id={device}",
            additional_headers={"Authorization": f"Bearer {token}"},
            **connect,
        )
        client = DeviceClient(user, device, socket)
        self.clients.append(client)
        hello = await client.next()
        assert hello["type"] == "hello"
        return client

    async def stop(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 8)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack()
            raise


@dataclass
class DeviceClient:
    """A test device: frames that arrive while it waits for another stay in `backlog`,
    so no assertion depends on the order of frames that the protocol does not order."""

    user: str
    device: str
    socket: Any
    backlog: list[dict[str, Any]] = field(default_factory=list)
    _seq: int = 0

    async def send(self, frame: dict[str, Any]) -> None:
        await self.socket.send(orjson.dumps(frame).decode())

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return await self._receive(timeout)

    async def _receive(self, timeout: float) -> dict[str, Any]:
        return orjson.loads(await asyncio.wait_for(self.socket.recv(), timeout))

    async def expect(self, type_: str, timeout: float = 5, **fields: Any) -> dict[str, Any]:
        """The first frame of `type_` with `fields`, received or still to come."""

        def matches(frame: dict[str, Any]) -> bool:
            return frame["type"] == type_ and all(frame.get(k) == v for k, v in fields.items())

        for frame in self.backlog:
            if matches(frame):
                self.backlog.remove(frame)
                return frame
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                frame = await self._receive(max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(
                    f"{self.device}: no {type_} {fields} within {timeout}s; backlog {self.backlog}"
                ) from None
            if matches(frame):
                return frame
            self.backlog.append(frame)

    async def request(self, frame: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        """Send a frame with a fresh id and return the reply with that id."""
        self._seq += 1
        request_id = f"r{self._seq}"
        await self.send({**frame, "id": request_id})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            reply = await self._receive(max(0.01, deadline - loop.time()))
            if reply.get("id") == request_id:
                return reply
            self.backlog.append(reply)

    async def silent(self, seconds: float = 0.3) -> None:
        """Assert that nothing more arrives for a while."""
        assert not self.backlog, f"{self.device} has unexpected frames: {self.backlog}"
        try:
            frame = await self._receive(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"{self.device} got an unexpected frame: {frame}")

    async def aclose(self) -> None:
        await self.socket.close()


async def start_node(settings: Settings, parts: NodeParts = NodeParts()) -> RunningNode:
    """A node in this process, built with `parts` where given. Its listener is bound
    first, so the node is built knowing its port (it goes into every push's status_url)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    app = create_app(settings, parts)
    config = uvicorn.Config(
        app,
        ws=LeanWebSocketProtocol,
        ws_max_size=settings.ws_max_frame_bytes,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return RunningNode(app.state.node, server, task, f"http://127.0.0.1:{port}", Authenticator(settings.jwt_secret))


@pytest.fixture
def running_nodes() -> list[RunningNode]:
    """The in-process nodes this test started, for every fixture that must outlive them."""
    return []


async def stop_nodes(nodes: list[RunningNode]) -> None:
    for running in nodes:
        if not running.task.done():
            await running.stop()


@pytest.fixture
async def node_factory(
    redis_settings: dict[str, str], prefix: str, redis: aioredis.Redis, running_nodes: list[RunningNode]
) -> AsyncIterator[Any]:
    async def factory(*, parts: NodeParts = NodeParts(), **overrides: Any) -> RunningNode:
        """`overrides` are settings; `parts` the node's parts given instead of built."""
        settings = make_settings(prefix=prefix, **{**redis_settings, **overrides})
        running = await start_node(settings, parts)
        running_nodes.append(running)
        return running

    yield factory
    await stop_nodes(running_nodes)


@pytest.fixture
async def node(node_factory: Any) -> RunningNode:
    return await node_factory()


async def register(node: RunningNode, user: str, device: str, **body: Any) -> dict[str, Any]:
    client = node.http()
    response = await client.put(
        f"/v1/devices/{device}",
        json={"voip_token": uuid.uuid4().hex * 2, "apns_environment": "sandbox", **body},
        headers={"Authorization": f"Bearer {node.auth.mint(user, 'device')}"},
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Starts redis-servers of the test's own (options as redis-server arguments);
    kills them all at the end."""
    started: list[RedisProcess] = []

    def start(*options: str, password: str = "") -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis-{len(started)}", *options, password=password)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of the module's own (3 primaries, 3 replicas): tests may fail it over,
    restart and reshard it. Its logs stay in the module's tmp dir."""
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop(keep_logs_in=tmp_path_factory.mktemp("redis-cluster-logs"))
