"""Interop with real sipp (apt-get install -y sip-tester) on loopback.

Our endpoint with the demo TU is the UAS for sipp's built-in ``uac``
scenario and for the OPTIONS and REGISTER-with-digest scenarios in
``scenarios/``; then sipp's built-in ``uas`` is called by our endpoint as
UAC.  sipp's exit status is 0 only when no call failed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.dialog import Dialog, DialogState
from sip.endpoint import SipEndpoint, TransactionUser
from sip.message import URI, NameAddr
from sip.transaction import RequestReceived, TimerConfig
from tests.ports import free_port
from tests.sip.demo_tu import DemoTU, invite_request
from tests.sipp import run_sipp

pytestmark = pytest.mark.interop

SCENARIOS = Path(__file__).parent / "scenarios"


def summary(output: str) -> str:
    lines = [line for line in output.splitlines() if "Successful call" in line or "Failed call" in line]
    return "\n".join(lines[-2:]) or output[-3000:]


@pytest.fixture
async def uas() -> AsyncIterator[tuple[SipEndpoint, DemoTU]]:
    endpoint = SipEndpoint("127.0.0.1", 0)
    tu = DemoTU(endpoint)
    await endpoint.start(tu)
    yield endpoint, tu
    await endpoint.close()


@pytest.mark.parametrize(
    ("transport", "extra"),
    [
        ("UDP", []),
        ("TCP", ["-t", "t1"]),
        ("UDP-lossy", ["-lost", "10"]),
    ],
)
async def test_sipp_uac_calls_our_uas(uas, tmp_path: Path, transport: str, extra: list[str]) -> None:  # type: ignore[no-untyped-def]
    endpoint, tu = uas
    calls = 30
    rc, output = await run_sipp(
        [f"127.0.0.1:{endpoint.port}", "-sn", "uac", "-p", "0", "-m", str(calls), "-r", "50", *extra],
        tmp_path,
    )
    assert rc == 0, summary(output)
    assert "Failed call            |        0" in output
    assert tu.requests.count("INVITE") == calls
    await asyncio.sleep(0.1)
    if transport == "UDP-lossy":
        # sipp's built-in uac matches "200" on the status alone: when its ACK
        # and then its BYE are lost, our 2xx retransmission passes for the
        # BYE's 200 and sipp ends the call without re-sending the BYE.  That
        # dialog stays, and its 2xx is retransmitted until the ACK timeout.
        assert tu.byes + len(tu.dialogs) == calls
        assert endpoint.core.unacknowledged <= len(tu.dialogs)
    else:
        assert tu.byes == calls and len(tu.dialogs) == 0
        assert not endpoint.core.unacknowledged


@pytest.mark.parametrize("extra", [[], ["-t", "t1"]])
async def test_sipp_options(uas, tmp_path: Path, extra: list[str]) -> None:  # type: ignore[no-untyped-def]
    endpoint, tu = uas
    rc, output = await run_sipp(
        [
            f"127.0.0.1:{endpoint.port}",
            "-sf",
            str(SCENARIOS / "options.xml"),
            "-p",
            "0",
            "-m",
            "20",
            "-r",
            "100",
            *extra,
        ],
        tmp_path,
    )
    assert rc == 0, summary(output)
    assert tu.requests.count("OPTIONS") == 20


@pytest.mark.parametrize("extra", [[], ["-t", "t1"]])
async def test_sipp_register_with_digest(uas, tmp_path: Path, extra: list[str]) -> None:  # type: ignore[no-untyped-def]
    endpoint, tu = uas
    rc, output = await run_sipp(
        [
            f"127.0.0.1:{endpoint.port}",
            "-sf",
            str(SCENARIOS / "register_digest.xml"),
            "-p",
            "0",
            "-au",
            "alice",
            "-ap",
            "wonderland",
            "-m",
            "10",
            "-r",
            "50",
            *extra,
        ],
        tmp_path,
    )
    assert rc == 0, summary(output)
    assert tu.requests.count("REGISTER") == 20 and "alice" in tu.registered


class NoRequests(TransactionUser):
    async def on_request(self, event: RequestReceived) -> None:
        raise AssertionError(f"unexpected request {event}")


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_our_uac_calls_sipp_uas(tmp_path: Path, transport: str) -> None:
    port = free_port()
    args = ["-sn", "uas", "-p", str(port), "-m", "1"] + (["-t", "t1"] if transport == "TCP" else [])
    sipp = asyncio.create_task(run_sipp(args, tmp_path, timeout=30))
    endpoint = SipEndpoint("127.0.0.1", 0, timers=TimerConfig(t1=0.1))
    await endpoint.start(NoRequests())
    try:
        if transport == "TCP":
            await wait_listening(port, sipp)
        target = NameAddr(
            URI("sip", user="service", host="127.0.0.1", port=port, params={"transport": transport.lower()})
        )
        invite = invite_request(target, endpoint.contact(transport), f"to-sipp-{transport}")
        response = await endpoint.send_request(invite)
        assert response.status == 200
        dialog = Dialog.uac(invite, response)
        assert dialog.state is DialogState.CONFIRMED
        endpoint.send_ack(dialog.create_ack(invite))
        bye = dialog.create_request("BYE")
        done = await endpoint.send_request(bye)
        dialog.receive_response(bye, done)
        assert done.status == 200 and dialog.state is DialogState.TERMINATED
        rc, output = await sipp
        assert rc == 0, summary(output)
    finally:
        if not sipp.done():
            sipp.cancel()
        await endpoint.close()


async def wait_listening(port: int, sipp: asyncio.Task[tuple[int, str]]) -> None:
    for _ in range(100):
        if sipp.done():
            rc, output = sipp.result()
            pytest.fail(f"sipp exited early ({rc}): {output[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.05)
    pytest.fail("sipp did not listen on TCP")
