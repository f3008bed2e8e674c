"""A SIPVicious scan changes nothing: svmap, svwar (extension enumeration by REGISTER and
by INVITE) and svcrack (a small wordlist) against a node find no extension and no
password, register nothing, create no call, and the node answers OPTIONS after."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests import interop
from tests.conftest import RunningNode
from tests.sipcalls.conftest import SipNodeFactory, sip_port
from tests.sipcalls.uac import build, send, sip_client

pytestmark = pytest.mark.interop

NAMES = ["100", "101", "1000", "admin", "alice", "bob", "carol", "operator", "test"]
PASSWORDS = ["123456", "password", "alice", "wonder", "looking", "secret", "1234"]


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(os.sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed: run `pip install sipvicious`")
    return path


async def run(name: str, *args: str, home: Path) -> str:
    """The tool's output; sipvicious exits 0 whether it found something or not."""
    interop.started(name)
    home.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        tool(name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(home)},
        cwd=home,  # sessions go to ~/.sipvicious
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return out.decode(errors="replace")


async def keys(node: RunningNode, pattern: str) -> list[bytes]:
    return [k async for k in node.node.connections.client.scan_iter(match=f"{node.node.stores.keys.prefix}{pattern}")]


async def test_sipvicious_scan_finds_nothing_and_changes_nothing(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    # Loopback untrusted, so INVITEs must authenticate as from anywhere else; a rate
    # limit high enough that every probe is answered rather than dropped.
    node = await sip_node(sip_trusted_networks=[], sip_rate=10_000, sip_burst=10_000)
    alice = await node.device("alice", "alice-app")  # a real, reachable user to look for
    port = str(sip_port(node))
    target = f"127.0.0.1:{port}"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    words = tmp_path / "words.txt"
    words.write_text("\n".join(PASSWORDS) + "\n")
    home = tmp_path / "home"

    found = await run("sipvicious_svmap", "-p", port, "127.0.0.1", home=home)
    assert f"127.0.0.1:{port}" in found  # it does see a SIP device: the scan reached us

    # --force: past svwar's own verdict that a server challenging unknown names cannot
    # be enumerated, so every name is tried.
    war = ("sipvicious_svwar", "--force", "-d", str(names), "-p", port)
    by_register = await run(*war, "-m", "REGISTER", "127.0.0.1", home=home)
    by_invite = await run(*war, "-m", "INVITE", "127.0.0.1", home=home)
    by_options = await run(*war, "-m", "OPTIONS", "127.0.0.1", home=home)
    for output in (by_register, by_invite, by_options):
        # Every name gets the same answer (a challenge, or 200 to OPTIONS), so none stands out.
        assert "found nothing" in output and "reqauth" not in output, output

    crack = ("sipvicious_svcrack", "-u", "alice", "-p", port)
    cracked = await run(*crack, "-d", str(words), "127.0.0.1", home=home)
    default = await run(*crack, "-r", "1000-1100", "127.0.0.1", home=home)
    for output in (cracked, default):
        assert "found nothing" in output and "wonderland" not in output, output

    assert await keys(node, "*sip_bindings") == []
    assert (await node.node.stores.devices.reachable("alice"))[1] == {"alice-app"}
    assert await keys(node, "{c:*}:call") == []
    assert await keys(node, "*:ring_deadlines") == []
    assert not node.node.sip.legs  # type: ignore[union-attr]
    assert not [f for f in alice.backlog if f["type"] == "call.incoming"]
    async with sip_client() as client:
        ok = await send(client, int(port), build("OPTIONS", f"sip:{target}"))
    assert ok.status == 200
