"""Connection hygiene: TLS/ALPN, PING, flow control, GOAWAY on shutdown, counters, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import ssl
import sys
from pathlib import Path

import httpx
from aioapns import APNs, NotificationRequest, PushType

from apnsim import APNsSimulator, SigningKey
from tests.apnsim.conftest import VOIP_PAYLOAD, VOIP_TOPIC, point_at_simulator, push_headers
from tests.apnsim.h2client import RawH2Client

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_tls_with_the_simulators_ca_and_alpn_h2(raw: RawH2Client, sim: APNsSimulator) -> None:
    await raw.ping()

    assert raw.alpn_protocol == "h2"
    assert sim.connections[0].alpn_protocol == "h2"
    assert Path(sim.ca_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert sim.endpoint == f"127.0.0.1:{sim.port}"


async def test_client_without_alpn_still_speaks_h2(sim: APNsSimulator, signing_key: SigningKey) -> None:
    plain_context = ssl.create_default_context(cafile=sim.ca_file)
    client = APNs(
        key=signing_key.private_pem,
        key_id=signing_key.key_id,
        team_id=signing_key.team_id,
        topic=VOIP_TOPIC,
        use_sandbox=True,
        ssl_context=plain_context,
    )
    point_at_simulator(client, sim)
    try:
        result = await client.send_notification(
            NotificationRequest(secrets.token_hex(32), {"aps": {}}, push_type=PushType.VOIP)
        )
    finally:
        client.pool.close()

    assert result.is_successful
    assert sim.connections[0].alpn_protocol is None


async def test_ping_is_answered(raw: RawH2Client) -> None:
    assert await raw.ping(b"12345678") == b"12345678"


async def test_flow_control_windows_are_given_back(raw: RawH2Client, signing_key: SigningKey) -> None:
    token = secrets.token_hex(32)
    body = json.dumps({"aps": {}, "pad": "p" * 4900}).encode()
    huge = b"x" * 100_000  # beyond the initial 65,535-byte windows

    responses = [await raw.request(push_headers(token, signing_key), body) for _ in range(20)]
    too_large = await raw.request(push_headers(token, signing_key), huge)

    assert [r.status for r in responses] == [200] * 20
    assert (too_large.status, too_large.reason) == (413, "PayloadTooLarge")


async def test_shutdown_sends_goaway_shutdown(raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey) -> None:
    await raw.request(push_headers(secrets.token_hex(32), signing_key), VOIP_PAYLOAD)

    await sim.stop()
    await asyncio.wait_for(raw.closed.wait(), 5)

    assert raw.goaway is not None
    assert raw.goaway.additional_data == b'{"reason":"Shutdown"}'
    assert raw.goaway.last_stream_id == 1
    assert sim.open_connections == []


async def test_connections_and_streams_are_counted(open_raw, sim: APNsSimulator, signing_key: SigningKey) -> None:
    first, second = await open_raw(), await open_raw()
    for client, count in ((first, 3), (second, 2)):
        for _ in range(count):
            await client.request(push_headers(secrets.token_hex(32), signing_key), VOIP_PAYLOAD)
    await second.close()
    await asyncio.sleep(0.05)

    assert [c.streams for c in sim.connections] == [3, 2]
    assert sim.stream_count == 5
    assert [c.id for c in sim.open_connections] == [sim.connections[0].id]
    assert {r.connection_id for r in sim.requests} == {1, 2}


async def test_httpx_http2_client_gets_method_not_allowed(sim: APNsSimulator) -> None:
    async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context(cafile=sim.ca_file)) as client:
        response = await client.get(f"https://{sim.endpoint}/3/device/{'ab' * 32}")

    assert response.http_version == "HTTP/2"
    assert response.status_code == 405
    assert response.json() == {"reason": "MethodNotAllowed"}
    assert response.headers["apns-id"]


async def test_standalone_process(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apnsim",
        "--port",
        "0",
        "--dir",
        str(tmp_path),
        "--generate-key",
        "TEAM123456:KEY1234567",
        "--strict",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None
    try:
        lines = [(await asyncio.wait_for(process.stdout.readline(), 10)).decode() for _ in range(3)]
        settings = dict(pair.split("=", 1) for line in lines for pair in line.split())
        host, port = settings["APNS_ENDPOINT"].rsplit(":", 1)
        client = APNs(
            key=Path(settings["APNS_KEY_FILE"]).read_text(),
            key_id=settings["APNS_KEY_ID"],
            team_id=settings["APNS_TEAM_ID"],
            topic=VOIP_TOPIC,
            use_sandbox=True,
            ssl_context=ssl.create_default_context(cafile=settings["APNS_CA_FILE"]),
        )
        base = client.pool.protocol_class
        client.pool.protocol_class = type("Simulated", (base,), {"APNS_SERVER": host, "APNS_PORT": int(port)})
        result = await client.send_notification(
            NotificationRequest(secrets.token_hex(32), {"aps": {}}, push_type=PushType.VOIP)
        )
        client.pool.close()
    finally:
        process.send_signal(signal.SIGTERM)
        return_code = await asyncio.wait_for(process.wait(), 10)

    assert (result.status, result.description) == ("400", "BadDeviceToken")
    assert return_code == 0
