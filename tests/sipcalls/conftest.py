"""SIP gateway fixtures: a real node with SIP enabled (UDP+TCP on a free port), real
Redis, and real sipp processes on loopback. sipp missing is a failure, not a skip."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningNode
from tests.sipp import run_sipp

SCENARIOS = Path(__file__).parent / "scenarios"
DOMAIN = "voip.test"
ACCOUNTS = {"alice": "wonderland", "carol": "looking-glass"}
APP_SDP = (
    "v=0\r\no=app 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

SipNodeFactory = Callable[..., Awaitable[RunningNode]]


@pytest.fixture
def sip_node(node_factory: Any) -> SipNodeFactory:
    async def start(**overrides: Any) -> RunningNode:
        settings = {
            "sip_enabled": True,
            "sip_port": 0,
            "sip_domain": DOMAIN,
            "sip_accounts": ACCOUNTS,
            # sipp answers the first challenge whatever its algorithm
            "sip_digest_algorithms": ["MD5"],
            **overrides,
        }
        running: RunningNode = await node_factory(**settings)
        return running

    return start


def sip_port(node: RunningNode) -> int:
    assert node.node.sip is not None
    return node.node.sip.port


async def until_unbound(node: RunningNode, user: str) -> None:
    """Until `user` has no binding left on the node: the flows they were registered over ended."""
    assert node.node.sip is not None
    for _ in range(200):
        if not await node.node.sip.registrar.bindings(user):
            return
        await asyncio.sleep(0.025)
    assert await node.node.sip.registrar.bindings(user) == {}


def start_sipp(args: list[str], cwd: Path, timeout: float = 30) -> asyncio.Task[tuple[int, str]]:
    """sipp in the background, tracing its messages (`messages_log`)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return asyncio.create_task(run_sipp([*args, "-trace_msg"], cwd, timeout))


async def finished(sipp: asyncio.Task[tuple[int, str]], timeout: float = 45) -> str:
    rc, output = await asyncio.wait_for(sipp, timeout)
    assert rc == 0, output[-8000:]
    return output


async def wait_bound(port: int, sipp: asyncio.Task[tuple[int, str]]) -> None:
    """Until sipp holds its UDP port, so our first INVITE is not lost to nobody."""
    for _ in range(200):
        if sipp.done():
            rc, output = sipp.result()
            pytest.fail(f"sipp exited early ({rc}): {output[-3000:]}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return
                raise
        await asyncio.sleep(0.05)
    pytest.fail(f"sipp did not bind UDP port {port}")


def messages_log(cwd: Path) -> str:
    """What sipp (run with -trace_msg in `cwd`) sent and received."""
    return "".join(log.read_text(errors="replace") for log in sorted(cwd.glob("*_messages.log")))


def scenario(name: str) -> str:
    return str(SCENARIOS / name)
