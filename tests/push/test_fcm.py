"""The FCM sender against the FCM simulator over loopback HTTP: its access tokens, its
answers judged, and a request that is never sent twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fcmsim import Fault, FCMSimulator, new_token
from voip.push import Caller, FCMConfig, FCMNotifier, Outcome, PlatformNotifiers, Push, PushKind
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
