"""config/haproxy/haproxy.cfg as shipped, run by the real haproxy in front of two nodes on
the shared Redis: a WebSocket call and the status endpoint through it, and the two ways a
node leaves: stopped (its connections refused) and draining (its /readyz turns 503)."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests import interop
from tests.conftest import RunningNode
from tests.ports import free_port

pytestmark = pytest.mark.interop

CONFIG = Path(__file__).resolve().parents[2] / "config" / "haproxy" / "haproxy.cfg"
CHECK_INTERVAL_MS = 200


@dataclass
class Balancer:
    process: subprocess.Popen[bytes]
    port: int
    admin_socket: Path
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` of the runtime API: each node's status ("UP", "DOWN", ...) and counters."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(5)
            admin.connect(str(self.admin_socket))
            admin.sendall(b"show stat\n")
            reply = b""
            while chunk := admin.recv(65536):
                reply += chunk
        rows = csv.DictReader(io.StringIO(reply.decode().lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "nodes" and row["svname"].startswith("node")}

    async def wait_status(self, server: str, status: str, timeout: float = 10) -> float:
        """Seconds until HAProxy's health checks put `server` in `status`."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while (current := self.servers()[server]["status"]) != status:
            assert self.process.poll() is None, self.log.read_text()
            assert loop.time() - began < timeout, f"{server} still {current}, not {status}: {self.servers()}"
            await asyncio.sleep(0.05)
        return loop.time() - began


@pytest.fixture
async def nodes(node_factory: Any) -> list[RunningNode]:
    return [await node_factory(node_id="node-a"), await node_factory(node_id="node-b")]


@pytest.fixture
async def balancer(nodes: list[RunningNode], tmp_path: Path) -> AsyncIterator[Balancer]:
    binary = interop.program("haproxy", "haproxy")
    port = free_port()
    env = {
        **os.environ,
        "VOIP_LB_BIND": f"127.0.0.1:{port}",
        "VOIP_LB_ADMIN_SOCKET": str(tmp_path / "haproxy.sock"),
        "VOIP_LB_CHECK_INTERVAL": f"{CHECK_INTERVAL_MS}ms",
        **{f"VOIP_LB_NODE{index}": node.base_url.removeprefix("http://") for index, node in enumerate(nodes, 1)},
    }
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=env, stdout=out, stderr=out)
    running = Balancer(process, port, tmp_path / "haproxy.sock", log)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not running.admin_socket.exists():
            assert process.poll() is None, log.read_text()
            assert loop.time() < deadline, log.read_text()
            await asyncio.sleep(0.02)
        for server in ("node1", "node2"):
            await running.wait_status(server, "UP")
        yield running
    finally:
        process.terminate()
        process.wait(10)
    assert "[ALERT]" not in log.read_text(), log.read_text()


async def connect(balancer: Balancer, node: RunningNode, user: str, device: str) -> tuple[Any, str]:
    """A device's WebSocket through the balancer, and the node that took it (its hello says)."""
    socket = await websockets.connect(
        f"{balancer.ws_url}?device_id={device}",
        additional_headers={"Authorization": f"Bearer {node.auth.mint(user, 'device')}"},
    )
    hello = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
    assert hello["type"] == "hello"
    return socket, hello["node"]


async def frame(socket: Any, type_: str, timeout: float = 5) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        received = orjson.loads(await asyncio.wait_for(socket.recv(), max(0.01, deadline - loop.time())))
        if received["type"] == type_:
            return received


async def test_a_websocket_call_and_its_status_through_the_balancer(
    balancer: Balancer, nodes: list[RunningNode]
) -> None:
    alice, alice_node = await connect(balancer, nodes[0], "alice", "a-phone")
    bob, bob_node = await connect(balancer, nodes[0], "bob", "b-phone")
    # Least connections: the second socket goes to the other node, so the call crosses nodes.
    assert {alice_node, bob_node} == {"node-a", "node-b"}
    try:
        await alice.send(orjson.dumps({"type": "call.start", "id": "1", "callee": "bob"}).decode())
        started = await frame(alice, "call.started")
        ringing = await frame(bob, "call.incoming")
        assert ringing["call_id"] == started["call_id"]
        await bob.send(orjson.dumps({"type": "call.answer", "id": "2", "call_id": started["call_id"]}).decode())
        await frame(alice, "call.answered")

        async with httpx.AsyncClient(base_url=balancer.base_url, timeout=5) as http:
            bearer = {"Authorization": f"Bearer {nodes[0].auth.mint('bob', 'device')}"}
            for _ in range(4):  # on both nodes, whichever HAProxy picks
                status = await http.get(f"/v1/calls/{started['call_id']}/status", headers=bearer)
                assert status.status_code == 200, status.text
                assert status.json()["state"] == "answered"
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await alice.close()
        await bob.close()


async def test_a_stopped_node_leaves_every_new_connection_to_the_survivor(
    balancer: Balancer, nodes: list[RunningNode]
) -> None:
    await nodes[0].stop()
    async with httpx.AsyncClient(base_url=balancer.base_url, timeout=5) as http:
        bearer = {"Authorization": f"Bearer {nodes[1].auth.mint('carol', 'device')}"}
        # Before the health checks notice: a refused connection is retried on node2.
        for index in range(10):
            socket, served_by = await connect(balancer, nodes[1], "carol", f"c-{index}")
            await socket.close()
            assert served_by == "node-b"
            unknown = await http.get("/v1/calls/no-such-call/status", headers=bearer)
            assert unknown.status_code == 404, unknown.text
        await balancer.wait_status("node1", "DOWN")
        served_before = int(balancer.servers()["node2"]["stot"])
        for index in range(10):
            socket, served_by = await connect(balancer, nodes[1], "carol", f"d-{index}")
            await socket.close()
            assert served_by == "node-b"
            assert (await http.get("/v1/calls/no-such-call/status", headers=bearer)).status_code == 404
        assert int(balancer.servers()["node2"]["stot"]) - served_before == 20
        assert balancer.servers()["node1"]["status"] == "DOWN"


async def test_a_draining_node_leaves_the_pool_and_its_devices_reconnect_to_the_survivor(
    balancer: Balancer, nodes: list[RunningNode]
) -> None:
    draining = nodes[0]
    held, held_by = await connect(balancer, draining, "dave", "d-phone")
    if held_by != "node-a":  # least connections picked node-b: one more lands on node-a
        extra, extra_by = await connect(balancer, draining, "dave", "d-tablet")
        held, extra = extra, held
        await extra.close()
        assert extra_by == "node-a"
    drain = asyncio.create_task(draining.node.drain())
    try:
        # The app is told to reconnect; through the balancer it lands on the survivor, even
        # before the health checks notice: node-a refuses new sockets with 503, retried on node-b.
        assert (await frame(held, "reconnect"))["type"] == "reconnect"
        for index in range(6):
            socket, served_by = await connect(balancer, draining, "dave", f"d-again-{index}")
            await socket.close()
            assert served_by == "node-b"
        # node-a still listens; /readyz 503 is what takes it out of the pool.
        async with httpx.AsyncClient(base_url=draining.base_url, timeout=5) as direct:
            assert (await direct.get("/readyz")).status_code == 503
        seconds = await balancer.wait_status("node1", "DOWN")
        assert seconds < 10 * CHECK_INTERVAL_MS / 1000, seconds  # fall 2, plus a loaded machine's slack
        assert balancer.servers()["node2"]["status"] == "UP"
    finally:
        await held.close()
        await drain
