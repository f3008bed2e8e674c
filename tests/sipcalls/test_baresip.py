"""baresip, a real softphone, registers as alice's SIP phone and is called by an app user;
from an untrusted network it calls an app user through our digest challenge (407)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests import interop
from tests.ports import free_port
from tests.sipcalls.conftest import SipNodeFactory, sip_port

pytestmark = pytest.mark.interop

CONFIG = """\
poll_method		epoll
sip_listen		127.0.0.1:{port}
audio_player		aubridge,nil
audio_source		ausine,440
audio_alert		aubridge,nil
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module			aubridge.so
module_app		account.so
module_app		menu.so
"""
ACCOUNT = '<sip:alice@voip.test>;auth_pass=wonderland;outbound="sip:127.0.0.1:{node_port}";regint=300;answermode=auto\n'


def baresip_sip_port() -> int:
    """A port for baresip's `sip_listen`: it listens for TLS on the next port too, so that
    one is handed out here as well, never later to another server."""
    for _ in range(100):
        port = free_port()
        if free_port() == port + 1:
            return port
    pytest.fail("no two consecutive free ports for baresip")


async def test_baresip_registers_and_answers_an_app_call(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    gateway = node.node.sip
    assert gateway is not None
    phone_port = baresip_sip_port()
    process = await start_baresip(tmp_path, phone_port, sip_port(node))
    try:
        for _ in range(100):
            bindings = await gateway.registrar.bindings("alice")
            if bindings:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("baresip did not register")
        ((device_id, binding),) = bindings.items()
        assert f"127.0.0.1:{phone_port}" in binding.contact

        bob = await node.device("bob", "bob-phone")
        started = await bob.request({"type": "call.start", "callee": "alice"})
        call_id = started["call_id"]
        answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
        assert answered["device_id"] == device_id
        assert "PCMU/8000" in answered["sdp"]  # baresip's own answer
        await asyncio.sleep(0.3)
        assert (await bob.request({"type": "call.hangup", "call_id": call_id}))["state"] == "ended"
        for _ in range(50):
            timeline = await node.node.stores.calls.timeline(call_id)
            if any(e.get("sent") == "BYE" for e in timeline):
                break
            await asyncio.sleep(0.1)
        bye = next(e for e in timeline if e.get("sent") == "BYE")
        assert bye["status"] == 200  # baresip took the BYE
    finally:
        await stop(process)


async def test_baresip_calls_from_an_untrusted_network_with_digest(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    """Loopback untrusted: baresip's INVITE gets a stateless 407 and its retry with
    Proxy-Authorization (qop=auth, nc counted in Redis) rings bob as alice. MD5 alone (the
    fixture's): baresip 1.0 gives up ("Function not implemented") on any SHA-256 challenge."""
    node = await sip_node(sip_trusted_networks=["198.51.100.0/24"])
    bob = await node.device("bob", "bob-phone")
    process = await start_baresip(tmp_path, baresip_sip_port(), sip_port(node), "/dial sip:bob@voip.test")
    try:
        incoming = await bob.expect("call.incoming", timeout=15)
        assert incoming["caller"] == "sip:alice@voip.test"
        assert (await bob.request({"type": "call.decline", "call_id": incoming["call_id"]}))["type"] == "ack"
    finally:
        output = await stop(process)
    assert "session closed: 603 Decline" in output, output


async def start_baresip(directory: Path, phone_port: int, node_port: int, *commands: str) -> asyncio.subprocess.Process:
    (directory / "config").write_text(CONFIG.format(port=phone_port))
    (directory / "accounts").write_text(ACCOUNT.format(node_port=node_port))
    return await asyncio.create_subprocess_exec(
        interop.program("baresip", "baresip"),
        *("-f", str(directory), "-t", "60"),
        *(a for command in commands for a in ("-e", command)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop(process: asyncio.subprocess.Process) -> str:
    """Ends baresip; what it printed."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    out = b""
    with contextlib.suppress(asyncio.TimeoutError):
        out, _ = await asyncio.wait_for(process.communicate(), 5)
    if process.returncode is None:
        process.kill()
        await process.wait()
    return out.decode(errors="replace")
