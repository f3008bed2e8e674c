"""`python -m voip run` as deployed: its own process, uvicorn on uvloop, the bundled APNs
simulator, SIP on. The in-process nodes of the other tests run on asyncio's own loop;
this is the one test of the loop and wiring that production uses."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from tests.conftest import SECRET
from tests.ports import free_port
from voip.auth import Authenticator

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def served(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port, sip_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VOIP_REDIS_PREFIX": prefix,
        "VOIP_JWT_SECRET": SECRET,
        "PORT": str(port),
        "SIP_ENABLED": "true",
        "SIP_PORT": str(sip_port),
        "SIP_DOMAIN": "voip.test",
    }
    for name in ("APNS_KEY_FILE", "APNS_ENDPOINT", "VOIP_CONFIG"):
        env.pop(name, None)
    log = (tmp_path / "node.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "node.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "node.log").read_text())
        yield base, sip_port
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    output = (tmp_path / "node.log").read_text()
    assert "Traceback" not in output, output
    # Structured logs: every line the process wrote, ours and uvicorn's, is a JSON object.
    for line in filter(None, output.splitlines()):
        assert isinstance(orjson.loads(line), dict), line


async def test_a_call_rings_a_sleeping_phone_through_the_bundled_simulator(served: tuple[str, int]) -> None:
    base, sip_port = served
    auth = Authenticator(SECRET)
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        bob = {"Authorization": f"Bearer {auth.mint('bob', 'device')}"}
        token = uuid.uuid4().hex * 2
        registered = await http.put("/v1/devices/b-phone", json={"voip_token": token}, headers=bob)
        assert registered.status_code == 201
        async with websockets.connect(
            f"{base.replace('http', 'ws')}/v1/ws?device_id=a-phone",
            additional_headers={"Authorization": f"Bearer {auth.mint('alice', 'device')}"},
        ) as alice:
            assert orjson.loads(await alice.recv())["type"] == "hello"
            await alice.send(orjson.dumps({"type": "call.start", "id": 1, "callee": "bob"}).decode())
            started = orjson.loads(await alice.recv())
            assert started["type"] == "call.started" and started["state"] == "ringing"

            operator = {"Authorization": f"Bearer {auth.mint('ops', 'operator')}"}
            for _ in range(100):
                detail = (await http.get(f"/v1/ops/calls/{started['call_id']}", headers=operator)).json()
                pushes = [e for e in detail["timeline"] if e["event"] == "push"]
                if pushes:
                    break
                await asyncio.sleep(0.05)
            assert pushes and pushes[0]["outcome"] == "accepted" and pushes[0]["status"] == 200

    # The same process answers SIP.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(5)
        udp.bind(("127.0.0.1", 0))
        local = udp.getsockname()[1]
        options = (
            f"OPTIONS sip:voip.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@voip.test>;tag=1\r\nTo: <sip:voip.test>\r\nCall-ID: {uuid.uuid4().hex}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        udp.sendto(options.encode(), ("127.0.0.1", sip_port))
        assert udp.recv(65535).startswith(b"SIP/2.0 200")
