"""SIP over TLS against a real node and a real TLS peer (baresip, built with OpenSSL;
Debian's sipp has no TLS). Certificates are made by the test: one CA and certificate for
the node, another for the phone, so each side verifies the other's name for real."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from simtls import TLSMaterial, generate_tls_material
from tests import interop
from tests.conftest import DeviceClient, RunningNode
from tests.ports import free_port
from tests.sipcalls.conftest import (
    APP_SDP,
    DOMAIN,
    SipNodeFactory,
    sip_node,  # noqa: F401  (the fixture, for this module)
)
from voip.settings import SettingsError, load_settings
from voip.sipcalls.config import SipConfig
from voip.sipcalls.registrar import Binding

pytestmark = pytest.mark.interop

PHONE_CONFIG = """\
poll_method		epoll
sip_listen		127.0.0.1:{port}
sip_certificate		{certificate}
sip_cafile		{ca_file}
audio_player		aubridge,nil
audio_source		ausine,440
ausrc_srate		48000
ausrc_channels		2
audio_alert		aubridge,nil
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module			aubridge.so
module_app		account.so
module_app		menu.so
"""
# Registers (and sends every request) over TLS through the node's TLS port, with digest.
PHONE_ACCOUNT = (
    "<sip:alice@voip.test;transport=tls>;auth_pass={password};"
    'outbound="sip:127.0.0.1:{tls_port};transport=tls";regint=300;answermode=auto\n'
)


def free_port_pair() -> int:
    """A port p with p + 1 free as well: baresip 1.0 puts its TLS listener one above
    sip_listen, with no setting of its own."""
    while True:
        port = free_port()
        if free_port() == port + 1:
            return port


@dataclass
class Phone:
    process: asyncio.subprocess.Process
    port: int
    output: bytearray

    def log(self) -> str:
        return self.output.decode(errors="replace")[-6000:]


@pytest.fixture
def node_tls(tmp_path: Path) -> TLSMaterial:
    return generate_tls_material(tmp_path / "node-tls", hostnames=("localhost", DOMAIN), issuer="node")


@pytest.fixture
def phone_tls(tmp_path: Path) -> TLSMaterial:
    return generate_tls_material(tmp_path / "phone-tls", issuer="phone")


@pytest.fixture
async def tls_node(sip_node: SipNodeFactory, node_tls: TLSMaterial, phone_tls: TLSMaterial) -> RunningNode:
    return await sip_node(
        sip_tls_port=0,
        sip_tls_cert_file=str(node_tls.cert_file),
        sip_tls_key_file=str(node_tls.key_file),
        sip_tls_ca_file=str(phone_tls.ca_file),
    )


def tls_port(node: RunningNode) -> int:
    assert node.node.sip is not None and node.node.sip.tls_port is not None
    return node.node.sip.tls_port


@contextlib.asynccontextmanager
async def baresip(
    directory: Path,
    node: RunningNode,
    node_tls: TLSMaterial,
    phone_tls: TLSMaterial,
    *commands: str,
    password: str = "wonderland",
) -> AsyncIterator[Phone]:
    directory.mkdir(parents=True, exist_ok=True)
    certificate = directory / "cert.pem"  # baresip wants its certificate and key in one file
    certificate.write_bytes(phone_tls.cert_file.read_bytes() + phone_tls.key_file.read_bytes())
    port = free_port_pair()
    (directory / "config").write_text(PHONE_CONFIG.format(port=port, certificate=certificate, ca_file=node_tls.ca_file))
    (directory / "accounts").write_text(PHONE_ACCOUNT.format(tls_port=tls_port(node), password=password))
    args = [a for command in commands for a in ("-e", command)]
    process = await asyncio.create_subprocess_exec(
        interop.program("baresip", "baresip"),
        "-f",
        str(directory),
        "-t",
        "60",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = bytearray()

    async def drain() -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(4096):
            output.extend(chunk)

    reader = asyncio.create_task(drain())
    try:
        yield Phone(process, port, output)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), 5)
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def bound(node: RunningNode, phone: Phone, user: str = "alice") -> tuple[str, Binding]:
    gateway = node.node.sip
    assert gateway is not None
    for _ in range(150):
        bindings = await gateway.registrar.bindings(user)
        if bindings:
            ((device_id, binding),) = bindings.items()
            return device_id, binding
        if phone.process.returncode is not None:
            break
        await asyncio.sleep(0.1)
    pytest.fail(f"baresip did not register over TLS:\n{phone.log()}")


def node_conns(node: RunningNode) -> set[tuple[str, tuple[str, int]]]:
    assert node.node.sip is not None
    return {key for key, conn in node.node.sip.endpoint._conns.items() if conn.open}


def tls_listener(phone: Phone) -> int:
    return phone.port + 1  # baresip listens for TLS one above sip_listen


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str, phone: Phone, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} within {timeout}s; baresip said:\n{phone.log()}")


async def hang_up(node: RunningNode, device: DeviceClient, call_id: str, phone: Phone) -> None:
    assert (await device.request({"type": "call.hangup", "call_id": call_id}))["state"] == "ended"

    async def bye_answered() -> bool:
        return any(
            e.get("sent") == "BYE" and e.get("status") == 200 for e in await node.node.stores.calls.timeline(call_id)
        )

    await wait_for(bye_answered, "no 200 for our BYE over TLS", phone)


# Settings --------------------------------------------------------------------------------


def tls_settings(material: TLSMaterial, **overrides: object) -> dict[str, object]:
    return {
        "sip_enabled": True,
        "sip_tls_port": 5061,
        "sip_tls_cert_file": str(material.cert_file),
        "sip_tls_key_file": str(material.key_file),
        **overrides,
    }


def test_tls_is_off_when_unset() -> None:
    settings = load_settings(sip_enabled=True, sip_tls_port="")
    assert settings.sip_tls_port is None
    assert not SipConfig.from_settings(settings).tls_enabled


def test_tls_settings_load_when_all_three_are_set(node_tls: TLSMaterial) -> None:
    config = SipConfig.from_settings(load_settings(**tls_settings(node_tls)))
    assert config.tls_enabled and config.tls_port == 5061


@pytest.mark.parametrize("left_out", ["sip_tls_port", "sip_tls_cert_file", "sip_tls_key_file"])
def test_tls_needs_all_three_settings(node_tls: TLSMaterial, left_out: str) -> None:
    settings = tls_settings(node_tls)
    del settings[left_out]
    with pytest.raises(SettingsError) as caught:
        load_settings(**settings)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(left_out.upper() + ":"), message


def test_tls_port_is_not_the_sip_port(node_tls: TLSMaterial) -> None:
    with pytest.raises(SettingsError, match=r"^SIP_TLS_PORT: 5061 is SIP_PORT already"):
        load_settings(**tls_settings(node_tls, sip_port=5061))


def test_tls_files_must_be_readable(node_tls: TLSMaterial, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(SettingsError, match=r"^SIP_TLS_CERT_FILE: not a readable file: .*nowhere.pem$"):
        load_settings(**tls_settings(node_tls, sip_tls_cert_file=str(missing)))
    node_tls.key_file.chmod(0)
    if os.access(node_tls.key_file, os.R_OK):  # root reads anything: make it a directory instead
        node_tls.key_file.chmod(0o600)
        with pytest.raises(SettingsError, match=r"^SIP_TLS_KEY_FILE: not a readable file"):
            load_settings(**tls_settings(node_tls, sip_tls_key_file=str(tmp_path)))
    else:
        with pytest.raises(SettingsError, match=r"^SIP_TLS_KEY_FILE: not a readable file"):
            load_settings(**tls_settings(node_tls))


def test_a_key_that_is_not_the_certificates_is_named(node_tls: TLSMaterial, phone_tls: TLSMaterial) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**tls_settings(node_tls, sip_tls_key_file=str(phone_tls.key_file)))
    message = str(caught.value)
    assert message.startswith("SIP_TLS_CERT_FILE, SIP_TLS_KEY_FILE: not a PEM certificate and its key")
    assert "PRIVATE KEY" not in message and "\n" not in message


def test_run_with_half_the_tls_settings_exits_2_with_one_line(node_tls: TLSMaterial, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("SIP_", "VOIP_", "APNS_"))}
    env.update({"SIP_ENABLED": "1", "SIP_TLS_PORT": "5061", "SIP_TLS_CERT_FILE": str(node_tls.cert_file)})
    result = subprocess.run(
        [sys.executable, "-m", "voip", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(": SIP_TLS_KEY_FILE: SIP over TLS needs SIP_TLS_PORT, SIP_TLS_CERT_FILE and SIP_TLS_KEY_FILE")


# A real TLS peer ---------------------------------------------------------------------------


async def test_register_over_tls_with_digest(
    tls_node: RunningNode, node_tls: TLSMaterial, phone_tls: TLSMaterial, tmp_path: Path
) -> None:
    async with baresip(tmp_path / "wrong", tls_node, node_tls, phone_tls, password="not-wonderland") as impostor:

        async def refused() -> bool:
            return "reg: sip:alice@voip.test: 401 Unauthorized" in impostor.log()

        await wait_for(refused, "no 401 for a wrong password over TLS", impostor)
        assert not await tls_node.node.sip.registrar.bindings("alice")  # type: ignore[union-attr]

    async with baresip(tmp_path / "phone", tls_node, node_tls, phone_tls) as phone:
        _device_id, binding = await bound(tls_node, phone)
        assert binding.transport == "TLS"
        assert binding.contact.endswith(f"@127.0.0.1:{tls_listener(phone)};transport=tls")
        host, port = binding.source.rsplit(":", 1)
        assert ("TLS", (host, int(port))) in node_conns(tls_node)  # the REGISTER's own connection

        async def accepted() -> bool:  # the binding is stored before the 200 leaves
            return "{0/TLS/v4} 200 OK" in phone.log()

        await wait_for(accepted, "no 200 OK for the REGISTER over TLS", phone)


@pytest.fixture
async def untrusting_node(sip_node: SipNodeFactory, node_tls: TLSMaterial) -> RunningNode:
    """TLS on, and no SIP_TLS_CA_FILE: the phone's private CA is not among the system's."""
    return await sip_node(
        sip_tls_port=0,
        sip_tls_cert_file=str(node_tls.cert_file),
        sip_tls_key_file=str(node_tls.key_file),
    )


async def test_app_call_reaches_a_phone_registered_over_tls(
    untrusting_node: RunningNode, node_tls: TLSMaterial, phone_tls: TLSMaterial, tmp_path: Path
) -> None:
    # The phone is rung over the TLS connection it registered on: a phone behind NAT, or
    # one whose certificate we cannot verify (as here), is reachable no other way.
    node = untrusting_node
    async with baresip(tmp_path / "phone", node, node_tls, phone_tls) as phone:
        device_id, binding = await bound(node, phone)
        host, port = binding.source.rsplit(":", 1)
        bob = await node.device("bob", "bob-phone")
        call_id = (await bob.request({"type": "call.start", "callee": "alice"}))["call_id"]
        answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
        assert answered["device_id"] == device_id and "PCMU/8000" in answered["sdp"]
        conns = node_conns(node)
        assert ("TLS", (host, int(port))) in conns
        assert ("TLS", ("127.0.0.1", tls_listener(phone))) not in conns  # nothing dialled
        await hang_up(node, bob, call_id, phone)


async def test_app_call_to_a_sips_uri_goes_over_tls(
    tls_node: RunningNode, node_tls: TLSMaterial, phone_tls: TLSMaterial, tmp_path: Path
) -> None:
    async with baresip(tmp_path / "phone", tls_node, node_tls, phone_tls) as phone:
        await bound(tls_node, phone)
        bob = await tls_node.device("bob", "bob-phone")
        target = f"sips:alice@127.0.0.1:{tls_listener(phone)}"
        call_id = (await bob.request({"type": "call.start", "callee": target}))["call_id"]
        await bob.expect("call.answered", timeout=10, call_id=call_id)
        assert ("TLS", ("127.0.0.1", tls_listener(phone))) in node_conns(tls_node)
        sent = next(e for e in await tls_node.timeline(call_id) if e.get("sent") == "INVITE")
        assert sent["target"] == target
        await hang_up(tls_node, bob, call_id, phone)


async def test_a_sips_callee_whose_certificate_we_cannot_verify_is_not_called(
    untrusting_node: RunningNode, node_tls: TLSMaterial, phone_tls: TLSMaterial, tmp_path: Path
) -> None:
    node = untrusting_node
    async with baresip(tmp_path / "phone", node, node_tls, phone_tls) as phone:
        await bound(node, phone)
        bob = await node.device("bob", "bob-phone")
        target = f"sips:alice@127.0.0.1:{tls_listener(phone)}"
        call_id = (await bob.request({"type": "call.start", "callee": target}))["call_id"]
        failed = await bob.expect("call.failed", timeout=10, call_id=call_id)
        assert failed["reason"] == "failed"
        assert "Call established" not in phone.log()
        assert ("TLS", ("127.0.0.1", tls_listener(phone))) not in node_conns(node)


async def test_a_tls_peer_calls_an_app_user(
    tls_node: RunningNode, node_tls: TLSMaterial, phone_tls: TLSMaterial, tmp_path: Path
) -> None:
    bob = await tls_node.device("bob", "bob-phone")
    async with baresip(tmp_path / "phone", tls_node, node_tls, phone_tls, "/dial sip:bob@voip.test") as phone:
        try:
            incoming = await bob.expect("call.incoming", timeout=15)
        except AssertionError:
            pytest.fail(f"baresip's call did not arrive:\n{phone.log()}")
        assert incoming["caller"] == "sip:alice@voip.test"
        call_id = incoming["call_id"]
        await bob.request({"type": "call.answer", "call_id": call_id, "sdp": APP_SDP})

        async def established() -> bool:
            return "Call established" in phone.log()

        await wait_for(established, "baresip did not hear our 200 over TLS", phone)
        received = next(e for e in await tls_node.timeline(call_id) if e.get("received") == "INVITE")
        host, port = received["source"].rsplit(":", 1)
        assert ("TLS", (host, int(port))) in node_conns(tls_node)  # the INVITE came over TLS
        await asyncio.sleep(0.3)  # baresip's ACK
        await hang_up(tls_node, bob, call_id, phone)  # our BYE goes back over that connection
        assert ("TLS", ("127.0.0.1", tls_listener(phone))) not in node_conns(tls_node)


SIPS_INVITE = (
    "INVITE sips:bob@voip.test SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-sips-1;rport\r\n"
    'From: "Carol" <sips:carol@pbx.example>;tag=c1\r\n'
    "To: <sips:bob@voip.test>\r\n"
    "Call-ID: sips-call-1@pbx.example\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sips:carol@127.0.0.1:{port}>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


async def read_response(reader: asyncio.StreamReader) -> str:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    assert "Content-Length: 0" in head or "\r\nContent-Length:" in head
    length = int(head.split("Content-Length:", 1)[1].split("\r\n", 1)[0])
    if length:
        await asyncio.wait_for(reader.readexactly(length), 10)
    return head


async def test_a_sips_invite_is_answered_with_a_sips_contact(tls_node: RunningNode, node_tls: TLSMaterial) -> None:
    # A peer that verifies our certificate (for 127.0.0.1, from the node's CA) and calls a
    # sips: URI: the dialog is secure, so our Contact is sips: too (RFC 3261 §8.1.1.8).
    bob = await tls_node.device("bob", "bob-phone")
    context = ssl.create_default_context(cafile=str(node_tls.ca_file))
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port(tls_node), ssl=context)
    try:
        port = writer.get_extra_info("sockname")[1]
        writer.write(SIPS_INVITE.format(port=port).encode())
        assert (await read_response(reader)).startswith("SIP/2.0 100 ")
        incoming = await bob.expect("call.incoming", timeout=10)
        assert incoming["caller"] == "sips:carol@pbx.example" and incoming["caller_name"] == "Carol"
        await bob.request({"type": "call.answer", "call_id": incoming["call_id"], "sdp": APP_SDP})
        ok = await read_response(reader)
        assert ok.startswith("SIP/2.0 200 ")
        contact = next(line for line in ok.split("\r\n") if line.startswith("Contact:"))
        assert contact == f"Contact: <sips:127.0.0.1:{tls_port(tls_node)}>", ok
        to = next(line for line in ok.split("\r\n") if line.startswith("To:"))
        for method, seq in (("ACK", 1), ("BYE", 2)):
            target = f"{method} sips:127.0.0.1:{tls_port(tls_node)}"  # our Contact
            request = SIPS_INVITE.format(port=port).replace("INVITE sips:bob@voip.test", target)
            request = request.replace("To: <sips:bob@voip.test>", to)  # with our tag
            request = request.replace("CSeq: 1 INVITE", f"CSeq: {seq} {method}").replace("sips-1;", f"sips-{method};")
            writer.write(request.encode())
        assert (await read_response(reader)).startswith("SIP/2.0 200 ")  # the BYE's
        await bob.expect("call.ended", timeout=10, call_id=incoming["call_id"])
    finally:
        writer.close()
