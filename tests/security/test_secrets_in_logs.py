"""Issue 8, item 4: no secret in any log line. A node runs as deployed (`python -m voip run`,
its own process, SIP on), logging at info and at debug (where every library says
everything), and is driven through every route and socket with credentials minted here:
devices, the status endpoint by bearer and by capability, WebSockets by header and by
`?access_token=` (accepted and refused), the operators' API and live feed (ticket, header,
query), TURN credentials, metrics, a SIP REGISTER and an INVITE from an untrusted source with digest
(and that INVITE's credentials replayed), pushes through the APNs and FCM simulators. Then
every line it wrote is searched for every one of those secrets (the FCM service account's
private key and OAuth2 access token among them)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
import websockets
from websockets.exceptions import InvalidStatus

from apnsim import APNsSimulator
from fcmsim import FCMSimulator
from sip.digest import authorize, compute_ha1, parse_credentials
from tests.conftest import SECRET
from tests.ports import free_port
from tests.sipcalls.uac import build, send, sip_client
from voip import logs
from voip.auth import Authenticator

DOMAIN = "voip.test"
TURN_SECRET = "turn-secret-" + secrets.token_urlsafe(16)
VOIP_TOPIC = "com.example.caller.voip"


@dataclass
class LoggedNode:
    base: str
    sip_port: int
    log_file: Path
    sim: APNsSimulator
    key_pem: str
    fcm: FCMSimulator
    fcm_key_pem: str
    password: str
    level: str
    secrets: dict[str, str] = field(default_factory=dict)  # what -> value

    def minted(self, what: str, value: str) -> str:
        self.secrets[what] = value
        return value

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://")


@pytest.fixture(params=["info", "debug"])
async def logged_node(
    request: pytest.FixtureRequest,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    apns: tuple[APNsSimulator, dict[str, str]],
    fcm: tuple[FCMSimulator, dict[str, str]],
) -> AsyncIterator[LoggedNode]:
    sim, apns_settings = apns
    fcm_sim, fcm_settings = fcm
    port, sip_port = free_port(), free_port()
    password = "pw-" + secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VOIP_REDIS_PREFIX": prefix,
        "VOIP_JWT_SECRET": SECRET,
        "PORT": str(port),
        "VOIP_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOIP_LOG_LEVEL": request.param,
        "SIP_ENABLED": "true",
        "SIP_PORT": str(sip_port),
        "SIP_DOMAIN": DOMAIN,
        "SIP_ACCOUNTS": orjson.dumps({"carol": password}).decode(),
        # Loopback is not trusted: an INVITE must carry Proxy-Authorization (407 first).
        "SIP_TRUSTED_NETWORKS": '["198.51.100.0/24"]',
        "TURN_URIS": '["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"]',
        "TURN_SECRET": TURN_SECRET,
        **{name.upper(): value for name, value in apns_settings.items()},
        **{name.upper(): value for name, value in fcm_settings.items()},
    }
    env.pop("VOIP_CONFIG", None)
    log_file = tmp_path / "node.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, log_file.read_text()
                try:
                    if (await http.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        key_pem = Path(apns_settings["apns_key_file"]).read_text()
        fcm_key_pem = orjson.loads(Path(fcm_settings["fcm_credentials_file"]).read_bytes())["private_key"]
        yield LoggedNode(base, sip_port, log_file, sim, key_pem, fcm_sim, fcm_key_pem, password, request.param)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


async def refused(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as refusal:
        await websockets.connect(url, additional_headers=headers or {})
    return refusal.value.response.status_code


async def hello(url: str, headers: dict[str, str] | None = None) -> Any:
    socket = await websockets.connect(url, additional_headers=headers or {})
    assert orjson.loads(await asyncio.wait_for(socket.recv(), 5))["type"] == "hello"
    return socket


async def drive_http_and_sockets(node: LoggedNode) -> None:
    auth = Authenticator(SECRET)
    alice = node.minted("alice's device token", auth.mint("alice", "device"))
    bob = node.minted("bob's device token", auth.mint("bob", "device"))
    operator = node.minted("operator token (header)", auth.mint("ops-alice", "operator"))
    operator_query = node.minted("operator token (query)", auth.mint("ops-bob", "operator"))
    bob_query = node.minted("bob's device token (query)", auth.mint("bob", "device"))
    expired = node.minted("expired token", auth.mint("alice", "device", ttl=-5))
    forged = node.minted("forged token", Authenticator("another-secret-" + "y" * 32).mint("alice", "device"))
    as_ops = {"Authorization": f"Bearer {operator}"}
    phone = node.sim.add_device(VOIP_TOPIC, online=False)

    async with httpx.AsyncClient(base_url=node.base, timeout=5) as http:
        # Devices
        put = await http.put(
            "/v1/devices/b-phone",
            headers={"Authorization": f"Bearer {bob}"},
            json={"voip_token": phone.token, "apns_environment": "sandbox"},
        )
        assert put.status_code == 201, put.text
        pixel = node.fcm.add_device()
        android = await http.put(
            "/v1/devices/b-pixel",
            headers={"Authorization": f"Bearer {bob}"},
            json={"platform": "android", "fcm_token": pixel.token},
        )
        assert android.status_code == 201, android.text
        assert (await http.get("/v1/devices", headers={"Authorization": f"Bearer {bob}"})).status_code == 200
        assert (await http.get("/v1/devices", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
        assert (await http.get("/v1/devices", params={"access_token": expired})).status_code == 401

        # TURN credentials: minted per request from TURN_SECRET
        ice = await http.get("/v1/ice-servers", headers={"Authorization": f"Bearer {bob}"})
        assert ice.status_code == 200, ice.text
        node.minted("TURN credential", ice.json()["ice_servers"][1]["credential"])
        node.minted("TURN_SECRET", TURN_SECRET)
        assert (await http.get("/v1/ice-servers", params={"access_token": bob_query})).status_code == 401

        # Device WebSockets: header, query, refusals of both kinds
        caller = await hello(f"{node.ws}/v1/ws?device_id=a-phone", {"Authorization": f"Bearer {alice}"})
        tablet = await hello(f"{node.ws}/v1/ws?device_id=b-tablet&access_token={bob_query}")
        assert await refused(f"{node.ws}/v1/ws?device_id=a-2&access_token={expired}") == 401
        assert await refused(f"{node.ws}/v1/ws?device_id=a-3&access_token={operator_query}") == 403
        assert await refused(f"{node.ws}/v1/ws?device_id=a-4", {"Authorization": f"Bearer {forged}"}) == 401

        # The operators' live feed: ticket (the page's way), header, query; refusals
        got = await http.post("/v1/ops/live/ticket", headers=as_ops)
        assert got.status_code == 200 and got.headers["cache-control"] == "no-store", got.text
        ticket = node.minted("live-feed ticket", got.json()["ticket"])
        watcher = await hello(f"{node.ws}/v1/ops/live?ticket={ticket}")
        assert await refused(f"{node.ws}/v1/ops/live?ticket={ticket}") == 401  # one use
        by_header = await hello(f"{node.ws}/v1/ops/live", as_ops)
        by_query = await hello(f"{node.ws}/v1/ops/live?access_token={operator_query}")
        assert await refused(f"{node.ws}/v1/ops/live?access_token={bob}") == 403
        device_ticket = await http.post("/v1/ops/live/ticket", headers={"Authorization": f"Bearer {bob}"})
        assert device_ticket.status_code == 403

        # A call: the invite push goes through the APNs simulator with a capability
        await caller.send(orjson.dumps({"type": "call.start", "id": 1, "callee": "bob"}).decode())
        while (started := orjson.loads(await asyncio.wait_for(caller.recv(), 5)))["type"] != "call.started":
            pass
        call_id = started["call_id"]
        invite = await node.sim.wait_for(
            lambda r: r.status == 200 and orjson.loads(r.body or b"{}").get("call_id") == call_id, timeout=10
        )
        fcm_invite = await node.fcm.wait_for(lambda m: m.status == 200 and m.data.get("call_id") == call_id, 10)
        node.minted("capability (from the FCM message)", httpx.URL(fcm_invite.data["status_url"]).params["cap"])
        for number, token in enumerate(node.fcm.accounts.issued_tokens()):
            node.minted(f"FCM access token {number}", token)
        status_url = orjson.loads(invite.body)["status_url"]
        node.minted("capability (from the push)", httpx.URL(status_url).params["cap"])
        node.minted("APNs provider token", (invite.header("authorization") or "").partition(" ")[2])

        # Call status by capability and by bearer; a capability minted here, wrong device
        by_capability = await http.get(status_url)
        assert by_capability.status_code == 200, by_capability.text
        by_bearer = await http.get(
            f"/v1/calls/{call_id}/status", params={"device_id": "b-phone"}, headers={"Authorization": f"Bearer {bob}"}
        )
        assert by_bearer.status_code == 200, by_bearer.text
        other = node.minted("capability (minted here)", auth.capability(call_id, "b-tablet", int(time.time()) + 3600))
        wrong = await http.get(f"/v1/calls/{call_id}/status", params={"device_id": "x", "cap": other})
        assert wrong.status_code == 401

        # Operators' API, metrics, the rest
        ops_paths = ("/v1/ops/calls", f"/v1/ops/calls/{call_id}", "/v1/ops/devices/bob", "/v1/ops/summary")
        for path in (*ops_paths, "/v1/ops/simulator/pushes", "/metrics"):
            assert (await http.get(path, headers=as_ops)).status_code == 200, path
        assert (await http.get("/metrics", headers={"Authorization": f"Bearer {bob}"})).status_code == 403
        assert (await http.get("/v1/ops/calls", params={"access_token": operator_query})).status_code == 401
        for path in ("/", "/healthz", "/readyz", "/openapi.json", "/ops", "/ops/ops.js"):
            assert (await http.get(path)).status_code == 200, path

        # The caller gives up: a cancellation push, entries on the live feeds
        await caller.send(orjson.dumps({"type": "call.hangup", "id": 2, "call_id": call_id}).decode())
        await node.sim.wait_for(
            lambda r: r.body is not None and orjson.loads(r.body or b"{}").get("type") == "call.cancelled",
            timeout=10,
        )
        for feed in (watcher, by_header, by_query):
            assert orjson.loads(await asyncio.wait_for(feed.recv(), 5))["type"] == "entry"
        deleted = await http.delete("/v1/devices/b-phone", headers={"Authorization": f"Bearer {bob}"})
        assert deleted.status_code == 204
        for socket in (caller, tablet, watcher, by_header, by_query):
            await socket.close()


async def drive_sip(node: LoggedNode) -> None:
    async with sip_client() as client:

        def register() -> Any:
            return build(
                "REGISTER",
                f"sip:{DOMAIN}",
                user="carol",
                to=f"sip:carol@{DOMAIN}",
                contact="<sip:carol@127.0.0.1:5996>",
                headers=[("Expires", "300")],
            )

        request = register()
        challenge = await send(client, node.sip_port, request)
        assert challenge.status == 401
        wrong = authorize(request, challenge, "carol", "not-the-password")
        assert (await send(client, node.sip_port, wrong)).status in (401, 403)
        request = register()
        challenge = await send(client, node.sip_port, request)
        answered = authorize(request, challenge, "carol", node.password)
        assert (await send(client, node.sip_port, answered)).status == 200
        for attempt, sent in (("wrong", wrong), ("right", answered)):
            header = str(sent.headers.get("Authorization"))
            credentials = parse_credentials(header)
            node.minted(f"SIP digest response ({attempt} password)", credentials.response)
            node.minted(
                f"SIP HA1 ({credentials.algorithm})",
                compute_ha1("carol", credentials.realm, node.password, credentials.algorithm),
            )

        # An INVITE from outside the trusted networks: 407, then Proxy-Authorization (to
        # nobody: 404 once authenticated), then the same header replayed (407 stale).
        invite = build("INVITE", f"sip:nobody@{DOMAIN}", user="carol", contact=str(client.contact()))
        challenge = await send(client, node.sip_port, invite)
        assert challenge.status == 407
        invite = authorize(invite, challenge, "carol", node.password)
        assert (await send(client, node.sip_port, invite)).status == 404
        proxy_authorization = str(invite.headers.get("Proxy-Authorization"))
        node.minted("SIP digest response (INVITE)", parse_credentials(proxy_authorization).response)
        replay = build(
            "INVITE", f"sip:nobody@{DOMAIN}", user="carol", headers=[("Proxy-Authorization", proxy_authorization)]
        )
        assert (await send(client, node.sip_port, replay)).status == 407
    node.minted("SIP password", node.password)


def scan(node: LoggedNode) -> list[str]:
    text = node.log_file.read_text()
    found = [f"{what}: {value[:12]}…" for what, value in node.secrets.items() if value and value in text]
    key_lines = [line for line in node.key_pem.splitlines() if not line.startswith("-----")]
    found += ["APNs private key" for line in key_lines if line in text]
    fcm_key_lines = [line for line in node.fcm_key_pem.splitlines() if not line.startswith("-----")]
    found += ["FCM service-account private key" for line in fcm_key_lines if line in text]
    if SECRET in text:
        found.append("VOIP_JWT_SECRET")
    return found


@pytest.mark.interop
async def test_no_secret_reaches_any_log_line(logged_node: LoggedNode) -> None:
    await drive_http_and_sockets(logged_node)
    await drive_sip(logged_node)
    await asyncio.sleep(0.2)  # lines written after the last answer (closes, push results)
    lines = [orjson.loads(line) for line in logged_node.log_file.read_text().splitlines() if line]
    assert lines and all(isinstance(line, dict) for line in lines)

    # The scan is not vacuous: the lines that used to carry the secrets are there.
    messages = [str(line.get("event")) for line in lines]
    assert any('"WebSocket /v1/ws?device_id=[redacted]&access_token=[redacted]" [accepted]' in m for m in messages)
    assert any('"WebSocket /v1/ws?device_id=[redacted]&access_token=[redacted]" 401' in m for m in messages)
    assert any("/v1/ops/live?ticket=[redacted]" in m for m in messages)
    assert any(line.get("logger") == "aioapns" for line in lines)
    assert any(line.get("event") == "fcm.access_token" for line in lines)  # google-auth's exchange happened
    if logged_node.level == "debug":  # websockets prints every handshake header
        assert any(m.lower().startswith("< authorization: ") for m in messages)
    assert any(line.get("event") == "sip.registered" for line in lines)
    assert any(line.get("event") == "sip.invite_challenged" for line in lines)
    assert len(logged_node.secrets) >= 17

    assert scan(logged_node) == []


def test_uvicorn_access_log_lines_are_redacted() -> None:
    """The node runs without uvicorn's access log, but a deployment may turn it on: its
    lines (path and query string as arguments) go through the same redaction."""
    stream = io.StringIO()
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    saved, config = (root.handlers[:], root.level), structlog.get_config()
    access_propagated = access.propagate
    access.propagate = True  # as with uvicorn's access_log=True (a node in this process turned it off)
    try:
        sys.stderr, real = stream, sys.stderr
        try:
            logs.configure("info")
        finally:
            sys.stderr = real
        token = Authenticator(SECRET).mint("ops", "operator")
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            f"/v1/calls/c/status?device_id=d&cap=1790000000.{'A' * 24}",
            "1.1",
            200,
        )
        logging.getLogger("uvicorn.error").info(
            '%s - "WebSocket %s" 403', "127.0.0.1:5000", f"/v1/ops/live?access_token={token}"
        )
        structlog.get_logger("voip").info(
            "event",
            headers={"Authorization": f"Bearer {token}"},
            url=f"http://h/x?access_token={token}",
            password="hunter2",
        )
        try:
            raise RuntimeError(f"failed with Authorization: Bearer {token}")
        except RuntimeError:
            logging.getLogger("sip.endpoint").exception("TU failed")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        access.propagate = access_propagated
        structlog.configure(**config)
    written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in written[:2]] == [
        '127.0.0.1:5000 - "GET /v1/calls/c/status?device_id=[redacted]&cap=[redacted] HTTP/1.1" 200',
        '127.0.0.1:5000 - "WebSocket /v1/ops/live?access_token=[redacted]" 403',
    ]
    assert written[2]["headers"] == {"Authorization": "[redacted]"}
    assert written[2]["url"] == "http://h/x?access_token=[redacted]" and written[2]["password"] == "[redacted]"
    assert "Authorization: [redacted]" in written[3]["exception"]
    text = stream.getvalue()
    assert token not in text and "hunter2" not in text and "A" * 24 not in text


JWT = Authenticator(SECRET).mint("carol", "device")
DIGEST = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "line, secret",
    [
        (f"< GET /v1/ws?device_id=d&access_token={JWT} HTTP/1.1", JWT),
        (f"< authorization: Bearer {JWT}", JWT),
        (f"[(b'authorization', b'bearer {JWT}'), (b':path', b'/3/device/ab')]", JWT),
        (f"{{'Authorization': 'Bearer {JWT}'}}", JWT),
        (f"token {JWT} alone", JWT),
        ("Authorization: Basic Y2Fyb2w6aHVudGVyMg==", "Y2Fyb2w6aHVudGVyMg=="),
        (
            f'Authorization: Digest username="carol", realm="voip.test", nonce="n1", uri="sip:voip.test", '
            f'response="{DIGEST}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c1"',
            DIGEST,
        ),
        (
            f"REGISTER sip:voip.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060\r\nProxy-Authorization: Digest "
            f'username="carol", response={DIGEST}, nonce="n1"\r\nContent-Length: 0\r\n\r\n',
            DIGEST,
        ),
        (f"Credentials(username='carol', realm='voip.test', nonce='n1', response='{DIGEST}')", DIGEST),
        (f"GET /v1/calls/c/status?device_id=d&cap=1790000000.{'x' * 24}", "x" * 24),
        (f"status_url http://h/v1/calls/c/status with cap 1790000000.{'Q' * 24}", "Q" * 24),
        ("SIP_ACCOUNTS={'carol': 'x'} password='hunter2'", "hunter2"),
        ('{"sip_trunk_password": "hunter2"}', "hunter2"),
        ("ha1=5f4dcc3b5aa765d61d8327deb882cf99", "5f4dcc3b5aa765d61d8327deb882cf99"),
        ("Error connecting to redis://:s3cr3t-pw@redis.internal:6379/0", "s3cr3t-pw"),
        (f"Voip-Signature: t=1767225600,v1={'ab' * 32}", "ab" * 32),
        ("webhook_secret='whsec-0123456789abcdef'", "whsec-0123456789abcdef"),
        ("POST https://app.example.com/voip/events?key=app-token-123", "app-token-123"),
        (
            "key -----BEGIN PRIVATE KEY-----\nMIGTAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----",
            "MIGTAgEAMBMGByqGSM49AgEGCCqGSM49",
        ),
    ],
)
def test_redaction_catches_each_shape(line: str, secret: str) -> None:
    assert secret not in logs.redact_text(line)
    assert logs.REDACTED in logs.redact_text(line)


def test_redaction_leaves_ordinary_lines_alone() -> None:
    for line in (
        "call.created",
        "df51d64a-e63d-482d-a537-b1e64a6459fa",
        "2026-12-02T00:43:53.313197Z",
        "Connection <voip.push.apns.APNsSandboxConnection object at 0x7f6f> lost! Error: None",
        "SIP/2.0 401 Unauthorized",
        'WWW-Authenticate: Digest realm="voip.test", nonce="abc"',
        "ring for 45 s",
        "GET /v1/ops/calls HTTP/1.1",
        "https://api.push.apple.com:443/3/device",
        "redis://127.0.0.1:6379/0",
    ):
        assert logs.redact_text(line) == line
