"""The FCM simulator on its own, over real HTTP: Google's token endpoint checks the
signed assertion; messages:send answers as FCM does; phones store one message per
collapse key while offline; over TLS, a CA of its own, also from `python -m fcmsim`."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from fcmsim import GOOGLE_TOKEN_URI, FCMSimulator, generate_service_account, new_token
from fcmsim.accounts import JWT_BEARER
from voip.push import FCMConfig, FCMNotifier, Outcome, Push, PushKind

ROOT = Path(__file__).resolve().parent.parent.parent

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(clock: Clock) -> AsyncIterator[FCMSimulator]:
    async with FCMSimulator(clock=clock) as simulator:
        yield simulator


def assertion(key: dict[str, Any], *, aud: str = GOOGLE_TOKEN_URI, lifetime: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": key["client_email"], "scope": SCOPE, "aud": aud, "iat": now, "exp": now + lifetime, **claims}
    return jwt.encode(payload, key["private_key"], algorithm="RS256", headers={"kid": key["private_key_id"]})


async def token_for(client: httpx.AsyncClient, signed: str) -> httpx.Response:
    return await client.post("/token", data={"grant_type": JWT_BEARER, "assertion": signed})


async def test_the_token_endpoint_checks_the_assertion(sim: FCMSimulator) -> None:
    key = sim.create_service_account()
    stranger = generate_service_account("sim-project", sim.token_uri, "fcm-sender")  # same email, other key
    async with httpx.AsyncClient(base_url=sim.endpoint) as client:
        for aud in (GOOGLE_TOKEN_URI, sim.token_uri):  # google-auth writes Google's; both are taken
            ok = await token_for(client, assertion(key, aud=aud))
            assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer" and ok.json()["expires_in"] == 3599
        forged = await token_for(client, assertion({**stranger, "private_key_id": key["private_key_id"]}))
        assert forged.status_code == 400 and forged.json() == {
            "error": "invalid_grant",
            "error_description": "Invalid JWT Signature.",
        }
        too_long = await token_for(client, assertion(key, lifetime=7200))
        assert too_long.json()["error"] == "invalid_grant" and "short-lived" in too_long.json()["error_description"]
        wrong_aud = await token_for(client, assertion(key, aud="https://example.com/token"))
        assert wrong_aud.json()["error"] == "invalid_grant"
        no_scope = await token_for(client, assertion(key, scope="https://www.googleapis.com/auth/userinfo.email"))
        assert no_scope.json()["error"] == "invalid_scope"
        unknown = await token_for(client, assertion({**key, "client_email": "x@y.iam.gserviceaccount.com"}))
        assert unknown.json()["error_description"] == "Invalid grant: account not found"
        grant = await client.post("/token", data={"grant_type": "password", "assertion": assertion(key)})
        assert grant.json()["error"] == "unsupported_grant_type"


async def send(client: httpx.AsyncClient, token: str | None, body: Any, project: str = "sim-project") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return await client.post(f"/v1/projects/{project}/messages:send", json=body, headers=headers)


def message(token: str, **android: Any) -> dict[str, Any]:
    return {"message": {"token": token, "data": {"type": "call.incoming"}, "android": {"priority": "high", **android}}}


async def test_messages_send_answers_as_fcm_does(sim: FCMSimulator, clock: Clock) -> None:
    key = sim.create_service_account()
    phone = sim.add_device()
    async with httpx.AsyncClient(base_url=sim.endpoint) as client:
        access = (await token_for(client, assertion(key))).json()["access_token"]
        accepted = await send(client, access, message(phone.token, ttl="30s", collapse_key="c1"))
        assert accepted.status_code == 200 and accepted.json()["name"].startswith("projects/sim-project/messages/")
        assert phone.inbox[0].message.priority == "HIGH" and phone.inbox[0].message.ttl == 30

        unauthenticated = await send(client, None, message(phone.token))
        assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["status"] == "UNAUTHENTICATED"
        other_project = await send(client, access, message(phone.token), project="someone-else")
        assert other_project.status_code == 403 and other_project.json()["error"]["status"] == "PERMISSION_DENIED"

        refusals: list[tuple[dict[str, Any], str]] = [
            (message(phone.token, priority="urgent"), "message.android.priority"),
            (message(phone.token, ttl="1m"), "message.android.ttl"),
            (message(phone.token, ttl=30), "message.android.ttl"),
            (message(phone.token, colapse_key="typo"), "message.android"),
            ({"message": {"token": phone.token, "data": {"n": 1}}}, "message.data"),
            ({"message": {"token": phone.token, "data": {"from": "x"}}}, "message.data"),
            ({"message": {"token": phone.token, "data": {"big": "x" * 5000}}}, "message"),
            ({"message": {"token": "bad token"}}, "message.token"),
        ]
        for body, field in refusals:
            refused = await send(client, access, body)
            error = refused.json()["error"]
            assert refused.status_code == 400 and error["status"] == "INVALID_ARGUMENT", body
            violations = [v["field"] for d in error["details"] for v in d.get("fieldViolations", [])]
            assert violations == [field], (body, error)
        both = await send(client, access, {"message": {"token": phone.token, "topic": "news"}})
        assert both.status_code == 400

        sim.uninstall(phone.token)
        gone = await send(client, access, message(phone.token))
        assert gone.status_code == 404 and gone.json() == {
            "error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "status": "NOT_FOUND",
                "details": [
                    {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
                ],
            }
        }
        clock.now += 3600  # the access token expired
        assert (await send(client, access, message(new_token()))).status_code == 401
    assert len(phone.inbox) == 1


async def test_an_offline_phone_keeps_one_message_per_collapse_key(sim: FCMSimulator, clock: Clock) -> None:
    key = sim.create_service_account()
    phone = sim.add_device(online=False)
    async with httpx.AsyncClient(base_url=sim.endpoint) as client:
        access = (await token_for(client, assertion(key))).json()["access_token"]
        for call in ("c1", "c2", "c3", "c4", "c5"):  # a fifth collapse key pushes the oldest out
            assert (await send(client, access, message(phone.token, ttl="60s", collapse_key=call))).status_code == 200
        assert (await send(client, access, message(phone.token, ttl="10s", collapse_key="c5"))).status_code == 200
        assert (await send(client, access, message(phone.token, ttl="0s", collapse_key="c6"))).status_code == 200
    assert [s.message.collapse_key for s in phone.pending] == ["c2", "c3", "c4", "c5"]
    clock.now += 30  # c5's newest message (ttl 10 s) expired meanwhile
    delivered = sim.set_online(phone.token, True)
    assert [d.message.collapse_key for d in delivered] == ["c2", "c3", "c4"]
    assert all(d.stored for d in delivered)
    assert sorted((d.message.collapse_key or "", d.cause.value) for d in phone.dropped) == [
        ("c1", "overflow"),
        ("c5", "displaced"),
        ("c5", "expired"),
        ("c6", "not-stored"),
    ]
    fates = [sim.fate(record)["delivery"] for record in sim.messages]
    assert fates == ["dropped", "delivered", "delivered", "delivered", "dropped", "dropped", "dropped"]


async def test_over_tls_it_serves_https_on_a_ca_of_its_own() -> None:
    async with FCMSimulator(tls=True) as tls_sim:
        assert tls_sim.endpoint == f"https://127.0.0.1:{tls_sim.port}"
        assert tls_sim.create_service_account()["token_uri"] == f"{tls_sim.endpoint}/token"
        assert tls_sim.trust(generate_service_account("sim-project", GOOGLE_TOKEN_URI))["token_uri"].startswith(
            "https:"
        )
        ca_file = Path(tls_sim.ca_file)
        trusting = ssl.create_default_context(cafile=ca_file)
        # A client that offers h2, as the FCM sender does to Google, is answered in HTTP/1.1.
        async with httpx.AsyncClient(base_url=tls_sim.endpoint, verify=trusting, http2=True) as client:
            listed = await client.get("/sim/messages")
            assert listed.status_code == 200 and listed.http_version == "HTTP/1.1"
        for host in ("localhost", "127.0.0.1"):  # the certificate names both
            async with httpx.AsyncClient(verify=trusting) as client:
                assert (await client.get(f"https://{host}:{tls_sim.port}/sim/messages")).status_code == 200
        async with httpx.AsyncClient(base_url=tls_sim.endpoint) as stranger:  # the default CAs
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await stranger.get("/sim/messages")
    assert not ca_file.parent.exists()  # its own temporary directory, gone with it


async def test_plain_http_has_no_ca_file(sim: FCMSimulator) -> None:
    assert sim.endpoint.startswith("http://") and sim.token_uri.startswith("http://")
    with pytest.raises(RuntimeError, match="not serving TLS"):
        _ = sim.ca_file


async def test_python_m_fcmsim_tls_serves_a_token_and_a_push_over_tls(tmp_path: Path) -> None:
    """The simulator in a process of its own, as a test in another process or an
    operator's FCM_* settings would use it."""
    key_file = tmp_path / "key.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "fcmsim", "--tls", "--dir", str(tmp_path / "tls"), "--key-file", str(key_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        printed = dict(process.stdout.readline().strip().split("=", 1) for _ in range(2))
        endpoint, ca_file = printed["FCM_ENDPOINT"], printed["FCM_CA_FILE"]
        assert endpoint.startswith("https://127.0.0.1:") and ca_file == str(tmp_path / "tls" / "fcmsim-ca.pem")
        key = orjson.loads(key_file.read_bytes())
        assert key["token_uri"] == f"{endpoint}/token" and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        notifier = FCMNotifier(FCMConfig(project_id="sim-project", credentials=key, endpoint=endpoint, ca_file=ca_file))
        try:
            async with httpx.AsyncClient(base_url=endpoint, verify=ssl.create_default_context(cafile=ca_file)) as api:
                phone = (await api.post("/sim/devices", json={})).json()
                push = Push(
                    PushKind.CANCEL,
                    "call-1",
                    {"platform": "android", "token": phone["token"]},
                    time.time() + 5,
                    reason="x",
                )
                result = await notifier.notify(push)
                assert result.outcome is Outcome.ACCEPTED and notifier.tokens.refreshes == 1
                inbox = (await api.get(f"/sim/devices/{phone['token']}")).json()["inbox"]
                assert [m["name"] for m in inbox] == [result.message_id]
        finally:
            await notifier.aclose()
    finally:
        process.terminate()
        assert process.wait(10) == 0


def test_python_m_fcmsim_wants_tls_for_dir(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "fcmsim", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert refused.returncode == 2 and "--dir: only with --tls" in refused.stderr
