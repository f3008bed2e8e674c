"""HTTP limits on a node as deployed (`python -m voip run`, uvicorn with httptools on
uvloop), tried with raw sockets as an attacker would: oversize and countless headers,
half-sent requests, bodies with missing bytes, more connections than the node takes."""

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
from websockets.exceptions import InvalidStatus

from tests.conftest import SECRET
from tests.ports import free_port
from voip.auth import Authenticator

pytestmark = pytest.mark.interop

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_CONNECTIONS = 6
# Time for the node to notice, on a machine shared with other test runs.
SLACK = 3.0


@pytest.fixture
def limited_node(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VOIP_REDIS_PREFIX": prefix,
        "VOIP_JWT_SECRET": SECRET,
        "PORT": str(port),
        "VOIP_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "VOIP_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "VOIP_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "VOIP_HTTP_KEEP_ALIVE": "60",
    }
    for name in ("APNS_KEY_FILE", "APNS_ENDPOINT", "VOIP_CONFIG", "SIP_ENABLED"):
        env.pop(name, None)
    log_path = tmp_path / "node.log"
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                # A fresh connection each time, closed at once: none is left to count.
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    output = log_path.read_text()
    assert "Traceback" not in output, output


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT + BODY_TIMEOUT + SLACK)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status_and_body(raw: bytes) -> tuple[int, dict[str, object], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body), head.lower()


def test_an_oversize_header_gets_431_and_the_connection_closes(limited_node: int) -> None:
    with connect(limited_node) as sock:
        # Never finished, like the 30 MB header: the node answers once it is over 16 KiB.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Big: " + b"a" * 40_000)
        status, body, head = status_and_body(read_until_closed(sock))
    assert status == 431 and body["error"] == "headers_too_large"
    assert b"connection: close" in head


def test_too_many_headers_get_431(limited_node: int) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(101))  # 1 KiB: small, but 101 fields
    with connect(limited_node) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n" + headers + b"\r\n")
        status, body, _ = status_and_body(read_until_closed(sock))
    assert status == 431 and body["error"] == "headers_too_large"
    # A hundred is still served.
    ok = httpx.get(f"http://127.0.0.1:{limited_node}/healthz", headers={f"X-H{i}": "1" for i in range(90)})
    assert ok.status_code == 200


def test_half_sent_requests_are_answered_408_and_closed_within_the_timeout(limited_node: int) -> None:
    # Connections over the node's cap too: a half-sent request is never counted as served.
    socks = [connect(limited_node) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        started = time.monotonic()
        for i, sock in enumerate(socks):
            if i % 2:  # half of them trickle a header in, half send nothing at all
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Slow: ")
        for sock in socks:
            raw = read_until_closed(sock)
            assert time.monotonic() - started < HEADER_TIMEOUT + SLACK
            status, body, _ = status_and_body(raw)
            assert status == 408 and body["error"] == "request_timeout"
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
    finally:
        for sock in socks:
            sock.close()


def test_trickled_bytes_do_not_restart_the_header_timeout(limited_node: int) -> None:
    with connect(limited_node) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.settimeout(0.3)
        data = b""
        for _ in range(int((HEADER_TIMEOUT + SLACK) / 0.3)):
            try:
                sock.sendall(b"X: 1\r\n")
            except OSError:  # closed on us: what we want
                break
            try:
                data += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if data:
                break
        assert data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - started < HEADER_TIMEOUT + SLACK


def test_a_body_with_missing_bytes_gets_408_within_the_timeout(limited_node: int) -> None:
    token = Authenticator(SECRET).mint("alice", "device")
    with connect(limited_node) as sock:
        started = time.monotonic()
        sock.sendall(
            b"PUT /v1/devices/a-phone HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b'\r\nContent-Length: 100\r\n\r\n{"voip_token": '
        )
        status, body, _ = status_and_body(read_until_closed(sock))
        elapsed = time.monotonic() - started
    assert status == 408 and body["error"] == "request_timeout"
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + SLACK


async def test_connections_over_the_cap_get_503_websockets_too(limited_node: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):  # kept alive: each one still counts
            sock = connect(limited_node)
            held.append(sock)
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "under the cap, served"
        with connect(limited_node) as extra:
            extra.sendall(request)
            status, body, head = status_and_body(read_until_closed(extra))
        assert status == 503 and body["error"] == "overloaded" and b"retry-after: 1" in head
        token = Authenticator(SECRET).mint("alice", "device")
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(
                f"ws://127.0.0.1:{limited_node}/v1/ws?device_id=a-{uuid.uuid4().hex[:6]}",
                additional_headers={"Authorization": f"Bearer {token}"},
            )
        assert refused.value.response.status_code == 503
        # One closed, one served again.
        held.pop().close()
        deadline = time.monotonic() + SLACK
        while True:
            with connect(limited_node) as again:
                again.sendall(request)
                if again.recv(65536).startswith(b"HTTP/1.1 200"):
                    break
            assert time.monotonic() < deadline, "a freed connection must make room"
            await asyncio.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
