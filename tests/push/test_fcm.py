"""The FCM sender against the FCM simulator over loopback HTTP, and over TLS as to
Google: its access tokens, its answers judged, a request that is never sent twice, and a
certificate it does not trust."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fcmsim import Fault, FCMSimulator, new_token
from simtls import generate_tls_material
from voip.push import Caller, FCMConfig, FCMNotifier, Outcome, PlatformNotifiers, Push, PushKind
from voip.push.fcm import UNTRUSTED
from voip.push.fcm_auth import AccessTokenError, AccessTokens
from voip.push.fcm_errors import judge, parse_error

MakeNotifier = Callable[..., FCMNotifier]


@pytest.fixture
async def sim() -> AsyncIterator[FCMSimulator]:
    async with FCMSimulator() as simulator:
        yield simulator


@pytest.fixture
async def make_notifier(sim: FCMSimulator) -> AsyncIterator[MakeNotifier]:
    made: list[FCMNotifier] = []
    key = sim.create_service_account()

    def make(**overrides: Any) -> FCMNotifier:
        options: dict[str, Any] = dict(
            project_id="sim-project", credentials=key, endpoint=sim.endpoint, backoff_base=0.01, backoff_max=0.05
        )
        notifier = FCMNotifier(FCMConfig(**{**options, **overrides}))
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        await notifier.aclose()


@pytest.fixture
async def tls_sim(tmp_path: Path) -> AsyncIterator[FCMSimulator]:
    async with FCMSimulator(tls=True, directory=tmp_path / "fcmsim") as simulator:
        yield simulator


@pytest.fixture
def other_ca(tmp_path: Path) -> str:
    """A CA that signed nothing the simulators serve."""
    return str(generate_tls_material(tmp_path / "other", issuer="other").ca_file)


def invite(token: str, ttl: float = 5.0) -> Push:
    return Push(
        PushKind.INVITE,
        "call-1",
        {"platform": "android", "token": token},
        deadline=time.time() + ttl,
        caller=Caller("alice", "Alice"),
        status_url="http://127.0.0.1/v1/calls/call-1/status",
    )


async def test_one_access_token_for_all_pushes_until_shortly_before_it_expires(sim: FCMSimulator) -> None:
    key = sim.create_service_account()
    now = [time.time()]
    tokens = AccessTokens(key, refresh_margin=300, clock=lambda: now[0])
    try:
        headers = await asyncio.gather(*(tokens.header() for _ in range(20)))
        assert len(set(headers)) == 1 and tokens.refreshes == 1 and sim.token_requests == 1
        now[0] += 3599 - 301  # still more than the margin left
        assert await tokens.header() == headers[0] and tokens.refreshes == 1
        now[0] += 2  # within the margin: a new one
        assert await tokens.header() != headers[0] and tokens.refreshes == 2
        assert headers[0].startswith("Bearer ya29.sim-")
        assert "private_key" not in repr(tokens) and headers[0].split()[1] not in repr(tokens)
    finally:
        tokens.close()


async def test_a_key_the_token_endpoint_refuses(sim: FCMSimulator) -> None:
    key = sim.create_service_account()
    sim.accounts.disable()
    tokens = AccessTokens(key)
    try:
        with pytest.raises(AccessTokenError, match="account not found"):
            await tokens.header()
    finally:
        tokens.close()


async def test_a_401_fetches_one_new_token_and_goes_again(sim: FCMSimulator, make_notifier: MakeNotifier) -> None:
    notifier = make_notifier()
    phone = sim.add_device()
    assert (await notifier.notify(invite(phone.token))).outcome is Outcome.ACCEPTED
    sim.accounts.revoke_tokens()  # e.g. revoked early by Google
    result = await notifier.notify(invite(phone.token))
    assert result.outcome is Outcome.ACCEPTED and result.attempts == 2 and notifier.tokens.refreshes == 2
    assert [m.status for m in sim.messages] == [200, 401, 200]


async def test_an_unanswered_request_is_not_sent_again(sim: FCMSimulator, make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(response_timeout=0.2)
    phone = sim.add_device()
    sim.inject(Fault.slow(0.5), phone.token)
    result = await notifier.notify(invite(phone.token))
    assert result.outcome is Outcome.FAILED and result.reason == "NoResponse" and result.attempts == 1
    await sim.wait_for(lambda m: m.status == 200)  # the slow answer lands: FCM took it
    assert len(sim.messages) == 1 and len(phone.inbox) == 1  # and it was sent once


async def test_backoff_honours_retry_after_and_stops_at_the_deadline(
    sim: FCMSimulator, make_notifier: MakeNotifier
) -> None:
    notifier = make_notifier()
    phone = sim.add_device()
    sim.inject(Fault.quota_exceeded(retry_after=5), phone.token)
    result = await notifier.notify(invite(phone.token, ttl=2))
    # FCM asked for 5 s, the deadline is 2 s away: no second attempt.
    assert result.outcome is Outcome.EXPIRED and result.attempts == 1 and result.status == 429
    assert len(sim.messages) == 1


async def test_a_refused_message_is_not_a_bad_token(sim: FCMSimulator, make_notifier: MakeNotifier) -> None:
    notifier = make_notifier()
    phone = sim.add_device()
    oversized = Push(
        PushKind.CANCEL, "call-1", {"platform": "android", "token": phone.token}, time.time() + 5, reason="x" * 5000
    )
    result = await notifier.notify(oversized)
    assert result.outcome is Outcome.REJECTED and result.drop_token is None and result.attempts == 0
    assert sim.messages == []


async def test_over_tls_the_token_and_the_push_trust_the_ca_file(tls_sim: FCMSimulator) -> None:
    key = tls_sim.create_service_account()
    assert key["token_uri"] == f"{tls_sim.endpoint}/token" and tls_sim.endpoint.startswith("https://127.0.0.1:")
    notifier = FCMNotifier(
        FCMConfig(project_id="sim-project", credentials=key, endpoint=tls_sim.endpoint, ca_file=tls_sim.ca_file)
    )
    try:
        phone = tls_sim.add_device()
        result = await notifier.notify(invite(phone.token))
        assert result.outcome is Outcome.ACCEPTED and result.attempts == 1
        assert tls_sim.token_requests == 1 and [d.name for d in phone.inbox] == [result.message_id]
    finally:
        await notifier.aclose()


@pytest.mark.parametrize("trust", ["another CA", "the default CAs"])
async def test_a_token_endpoint_not_trusted_fails_the_push_at_once(
    tls_sim: FCMSimulator, other_ca: str, trust: str
) -> None:
    ca_file = other_ca if trust == "another CA" else None
    key = tls_sim.create_service_account()
    notifier = FCMNotifier(
        FCMConfig(project_id="sim-project", credentials=key, endpoint=tls_sim.endpoint, ca_file=ca_file)
    )
    try:
        phone = tls_sim.add_device()
        result = await notifier.notify(invite(phone.token, ttl=30))
        # No retry until the deadline: a certificate refused is a configuration error.
        assert result.outcome is Outcome.FAILED and result.reason == UNTRUSTED and result.attempts == 0
        assert result.likely_cause is not None
        assert f"the TLS certificate of the key's token_uri, {tls_sim.token_uri}, is not trusted" in result.likely_cause
        assert "unable to get local issuer certificate" in result.likely_cause
        trusted = f"FCM_CA_FILE={other_ca}" if ca_file else "the default CAs: no FCM_CA_FILE"
        assert trusted in result.likely_cause
        with pytest.raises(AccessTokenError) as refused:
            await notifier.connect()  # readiness says the same
        assert refused.value.untrusted_certificate
        assert tls_sim.token_requests == 0 and tls_sim.messages == [] and phone.inbox == []
    finally:
        await notifier.aclose()


async def test_an_fcm_endpoint_not_trusted_fails_the_push_at_once(tls_sim: FCMSimulator, tmp_path: Path) -> None:
    """The token endpoint is trusted, FCM is not: the refusal names FCM_ENDPOINT."""
    async with FCMSimulator(tls=True, directory=tmp_path / "elsewhere") as elsewhere:
        key = tls_sim.create_service_account()
        notifier = FCMNotifier(
            FCMConfig(project_id="sim-project", credentials=key, endpoint=elsewhere.endpoint, ca_file=tls_sim.ca_file)
        )
        try:
            result = await notifier.notify(invite(elsewhere.add_device().token, ttl=30))
            assert result.outcome is Outcome.FAILED and result.reason == UNTRUSTED and result.attempts == 0
            assert result.likely_cause == (
                f"the TLS certificate of FCM_ENDPOINT, {elsewhere.endpoint}, is not trusted: "
                f"unable to get local issuer certificate (trusting FCM_CA_FILE={tls_sim.ca_file})"
            )
            assert tls_sim.token_requests == 1 and elsewhere.messages == []
        finally:
            await notifier.aclose()


async def test_the_ca_file_outranks_requests_ca_bundle(
    tls_sim: FCMSimulator, other_ca: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests lets REQUESTS_CA_BUNDLE replace a session's own `verify`; FCM_CA_FILE
    still decides what the token endpoint is checked against."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", other_ca)
    tokens = AccessTokens(tls_sim.create_service_account(), ca_file=tls_sim.ca_file)
    try:
        assert (await tokens.header()).startswith("Bearer ya29.sim-") and tls_sim.token_requests == 1
    finally:
        tokens.close()


def fcm_error(status: int, code: str, message: str = "", field: str | None = None) -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
    ]
    if field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": field}]})
    return {"error": {"code": status, "message": message, "status": "X", "details": details}}


@pytest.mark.parametrize(
    ("status", "body", "outcome", "drops"),
    [
        (404, fcm_error(404, "UNREGISTERED"), Outcome.TOKEN_INVALID, True),
        (404, None, Outcome.TOKEN_INVALID, True),
        (400, fcm_error(400, "INVALID_ARGUMENT", field="message.token"), Outcome.TOKEN_INVALID, True),
        (
            400,
            fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
            Outcome.TOKEN_INVALID,
            True,
        ),
        (400, fcm_error(400, "INVALID_ARGUMENT", "bad ttl", field="message.android.ttl"), Outcome.REJECTED, False),
        (403, fcm_error(403, "SENDER_ID_MISMATCH"), Outcome.REJECTED, False),
        (429, fcm_error(429, "QUOTA_EXCEEDED"), None, False),
        (500, fcm_error(500, "INTERNAL"), None, False),
        (503, {"not": "google"}, None, False),
    ],
)
def test_judge(status: int, body: Any, outcome: Outcome | None, drops: bool) -> None:
    verdict = judge(parse_error(status, body), status, 1_000)
    assert verdict.outcome == outcome
    assert (verdict.drop_token is not None) == drops
    if drops:
        assert verdict.drop_token is not None and verdict.drop_token.registered_before == 1_000


async def test_the_android_address_and_no_missed_call_alert(make_notifier: MakeNotifier) -> None:
    notifier = make_notifier()
    token = new_token()
    device = {"platform": "android", "fcm_token": token}
    assert notifier.address(device, PushKind.INVITE) == {"platform": "android", "token": token}
    assert notifier.address(device, PushKind.MISSED_ALERT) is None
    assert notifier.address({"voip_token": "ab" * 32}, PushKind.INVITE) is None
    assert notifier.address({"platform": "android", "fcm_token": None}, PushKind.INVITE) is None


async def test_the_router_sends_each_platform_to_its_notifier(sim: FCMSimulator, make_notifier: MakeNotifier) -> None:
    fcm = make_notifier()
    only_ios = PlatformNotifiers({"ios": fcm})  # any notifier stands in for APNs here
    both = PlatformNotifiers({"ios": fcm, "android": fcm})
    android = {"platform": "android", "fcm_token": new_token()}
    assert only_ios.address(android, PushKind.INVITE) is None  # a node without FCM: no address
    assert both.address(android, PushKind.INVITE) == {"platform": "android", "token": android["fcm_token"]}
    # A call pushed by a node with FCM, ended on one without: refused, never raised.
    result = await only_ios.notify(invite(android["fcm_token"]))
    assert result.outcome is Outcome.REJECTED and result.reason == "PlatformNotConfigured"
    assert result.attempts == 0 and sim.messages == []
    with pytest.raises(ValueError, match="iOS notifier is required"):
        PlatformNotifiers({"android": fcm})
