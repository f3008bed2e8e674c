"""Issue 9, item 6, with real node processes (`python -m voip run`): SIGTERM drains the
node and the process exits 0; a call ringing on it times out on time on another node;
the private development Redis does not outlive it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from apnsim import APNsSimulator, Fault
from tests.conftest import BUNDLE, CLIENT_LIMITS, SECRET, RunningNode
from tests.ports import free_port
from voip.auth import Authenticator
from voip.stores import Stores

pytestmark = pytest.mark.interop

VOIP_TOPIC = f"{BUNDLE}.voip"
DRAIN_SECONDS = 10
AUTH = Authenticator(SECRET)


class NodeProcess:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1/ws"
        self.log_path = tmp_path / f"node-{self.port}.log"
        full_env = {**os.environ, "VOIP_JWT_SECRET": SECRET, "PORT": str(self.port), **env}
        for name in ("APNS_KEY_FILE", "APNS_ENDPOINT", "VOIP_CONFIG"):
            if name not in env:
                full_env.pop(name, None)
        if "REDIS_URL" not in env:
            full_env.pop("REDIS_URL", None)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=full_env, stdout=self._log, stderr=self._log
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as http:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.output
                try:
                    if (await http.get(f"{self.base}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(self.output)

    def logged(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.output.splitlines() if line.strip()]

    async def exit_code(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"still running after {timeout} s:\n{self.output}"
            await asyncio.sleep(0.05)
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()

    def assert_clean_log(self) -> None:
        output = self.output
        assert "Traceback" not in output and "never retrieved" not in output, output
        for line in filter(None, output.splitlines()):
            assert isinstance(orjson.loads(line), dict), line


@pytest.fixture
def processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.close()


@pytest.fixture
async def stores(redis_url: str, prefix: str) -> AsyncIterator[Stores]:
    client = aioredis.Redis.from_url(redis_url)
    yield Stores.open(client, prefix, retention=86400)
    async for key in client.scan_iter(match=f"{prefix}*", count=500):
        await client.delete(key)
    await client.aclose()


def _apns_env(settings: dict[str, str]) -> dict[str, str]:
    return {name.upper(): value for name, value in settings.items()}


async def _device(node: NodeProcess, user: str, device: str) -> Any:
    socket = await websockets.connect(
        f"{node.ws}?device_id={device}", additional_headers={"Authorization": f"Bearer {AUTH.mint(user, 'device')}"}
    )
    assert orjson.loads(await socket.recv())["type"] == "hello"
    return socket


async def test_sigterm_drains_the_node_then_it_exits_0(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    stores: Stores,
    processes: list[NodeProcess],
    apns: tuple[APNsSimulator, dict[str, str]],
) -> None:
    sim, apns_settings = apns
    node = NodeProcess(
        tmp_path,
        {
            "REDIS_URL": redis_url,
            "VOIP_REDIS_PREFIX": prefix,
            "VOIP_DRAIN_SECONDS": str(DRAIN_SECONDS),
            **_apns_env(apns_settings),
        },
    )
    processes.append(node)
    await node.ready()
    phone = sim.add_device(VOIP_TOPIC, online=False)
    async with httpx.AsyncClient(base_url=node.base, timeout=5, limits=CLIENT_LIMITS) as http:
        registered = await http.put(
            "/v1/devices/b-phone",
            json={"voip_token": phone.token, "apns_environment": "production"},
            headers={"Authorization": f"Bearer {AUTH.mint('bob', 'device')}"},
        )
        assert registered.status_code == 201, registered.text
        alice = await _device(node, "alice", "a-phone")
        # APNs holds bob's invite for 2 s (under the notifier's 3 s response timeout): a
        # push in flight when the signal comes.
        sim.inject(Fault.slow(2.0), token=phone.token)
        await alice.send(orjson.dumps({"type": "call.start", "id": 1, "callee": "bob"}).decode())
        started = orjson.loads(await alice.recv())
        assert started["type"] == "call.started"
        held = await sim.wait_for(lambda r: r.token == phone.token, timeout=10)
        assert not held.answered

        signalled = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        while True:
            ready = await http.get("/readyz")
            if ready.status_code == 503:
                break
            assert time.monotonic() - signalled < 2, "readyz still 200 two seconds after SIGTERM"
        assert ready.json()["status"] == "draining"
        assert not held.answered, "readyz turned 503 only once the push in flight was done"

        with pytest.raises(websockets.InvalidStatus) as refused:
            await _device(node, "carol", "c-phone")
        assert refused.value.response.status_code == 503

        frames: list[dict[str, Any]] = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frames.append(orjson.loads(await asyncio.wait_for(alice.recv(), DRAIN_SECONDS + 5)))
        closed_after = time.monotonic() - signalled
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert frames[-1] == {"type": "reconnect", "reason": "draining"}, frames
    assert closed_after < DRAIN_SECONDS, closed_after
    assert await node.exit_code(DRAIN_SECONDS + 10) == 0

    timeline = await stores.calls.timeline(started["call_id"])
    [invite] = [e for e in timeline if e["event"] == "push" and e["kind"] == "invite"]
    assert invite["outcome"] == "accepted" and invite["apns_id"] == held.apns_id
    node.assert_clean_log()
    # The sockets were closed once the push in flight was answered and recorded.
    events = [line["event"] for line in node.logged()]
    assert events.index("node.draining") < events.index("push.sent") < events.index("node.drained")
    [drained] = [line for line in node.logged() if line["event"] == "node.drained"]
    assert drained["pushes_left"] == 0 and drained["sockets_closed"] == 1


async def test_a_call_ringing_on_a_drained_node_times_out_on_time_on_another_node(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    stores: Stores,
    processes: list[NodeProcess],
    node_factory: Any,
) -> None:
    draining = NodeProcess(tmp_path, {"REDIS_URL": redis_url, "VOIP_REDIS_PREFIX": prefix, "VOIP_RING_TIMEOUT": "3"})
    processes.append(draining)
    other: RunningNode = await node_factory()
    await draining.ready()
    bob = await other.device("bob", "b-phone")
    alice = await _device(draining, "alice", "a-phone")
    await alice.send(orjson.dumps({"type": "call.start", "id": 1, "callee": "bob"}).decode())
    started = orjson.loads(await alice.recv())
    call_id, deadline = started["call_id"], started["ring_deadline"]
    await bob.expect("call.incoming", call_id=call_id)

    draining.process.send_signal(signal.SIGTERM)
    assert await draining.exit_code(DRAIN_SECONDS + 10) == 0
    draining.assert_clean_log()
    assert time.time() * 1000 < deadline, "the node took until the deadline to stop; nothing proven"

    missed = await bob.expect("call.missed", timeout=10, call_id=call_id)
    late = missed["ended_at"] - deadline
    assert 0 <= late < 2000, late
    [missing] = [e for e in await stores.calls.timeline(call_id) if e["event"] == "state" and e.get("to") == "missed"]
    assert missing["node"] == other.node.node_id


def _processes_using(path: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if path.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_on_run_without_redis_url_leaves_no_redis_server(
    tmp_path: Path, processes: list[NodeProcess], sig: signal.Signals
) -> None:
    node = NodeProcess(tmp_path, {"VOIP_DRAIN_SECONDS": "2"})
    processes.append(node)
    await node.ready()
    [private] = [line for line in node.logged() if line["event"] == "redis.private"]
    socket_path = re.sub(r"^unix://", "", private["url"])
    servers = _processes_using(socket_path)
    assert len(servers) == 1, servers  # the private redis-server, in a session of its own

    node.process.send_signal(sig)
    assert await node.exit_code(DRAIN_SECONDS + 10) == 0
    deadline = time.monotonic() + 5
    while left := _processes_using(socket_path):
        assert time.monotonic() < deadline, left
        await asyncio.sleep(0.05)
    assert not Path(socket_path).parent.exists()
    node.assert_clean_log()
