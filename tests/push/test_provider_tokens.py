"""Provider-token (JWT) rules: one token per key, refreshed after 20 and before 60 minutes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apnsim import APNsSimulator, ManualClock, SigningKey
from tests.push.conftest import KEY_ID, TEAM_ID, VOIP_TOPIC, MakeNotifier, invite
from voip.push import Outcome

MINUTE = 60


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


@pytest.fixture
async def sim(tmp_path: Path, clock: ManualClock) -> AsyncIterator[APNsSimulator]:
    async with APNsSimulator(tmp_path / "apns", clock=clock) as simulator:
        yield simulator


def token_of(record: object) -> str:
    return record.header("authorization")  # type: ignore[attr-defined, no-any-return]


async def test_one_token_serves_every_connection(
    make_notifier: MakeNotifier, sim: APNsSimulator, clock: ManualClock
) -> None:
    from apnsim import Fault

    notifier = make_notifier(clock=clock)
    device = sim.add_device(VOIP_TOPIC)
    for _ in range(3):
        sim.inject(Fault.goaway("Shutdown"), token=device.token)
        assert (await notifier.send(invite(device))).outcome == Outcome.ACCEPTED
        clock.advance(MINUTE)

    assert len(sim.connections) == 3
    assert len({token_of(r) for r in sim.requests}) == 1
    assert notifier.tokens is not None and notifier.tokens.issued == 1


async def test_token_kept_for_20_minutes_and_replaced_before_60(
    make_notifier: MakeNotifier, sim: APNsSimulator, clock: ManualClock
) -> None:
    notifier = make_notifier(clock=clock)
    device = sim.add_device(VOIP_TOPIC)
    seen = []
    for step in (0, 19, 19, 11, 19, 19):  # minutes: 0, 19, 38, 49, 68, 87
        clock.advance(step * MINUTE)
        result = await notifier.send(invite(device))
        assert result.outcome == Outcome.ACCEPTED, result
        seen.append(token_of(sim.requests[-1]))

    # Re-signed at 50 min of age (at 68), never within 20 minutes, never past 60.
    assert seen[0] == seen[1] == seen[2] == seen[3]
    assert seen[4] != seen[3] and seen[4] == seen[5]
    assert notifier.tokens is not None and notifier.tokens.issued == 2
    assert len(sim.connections) == 1
    assert all(r.reason is None for r in sim.requests)


async def test_expired_provider_token_gets_a_new_token_and_a_retry(
    make_notifier: MakeNotifier, sim: APNsSimulator, clock: ManualClock
) -> None:
    ours = ManualClock(start=clock())
    notifier = make_notifier(clock=ours)
    device = sim.add_device(VOIP_TOPIC)
    assert (await notifier.send(invite(device))).outcome == Outcome.ACCEPTED
    # APNs's clock runs ahead of ours: it calls a 21-minute-old token (ours) 61 minutes old.
    clock.advance(61 * MINUTE)
    ours.advance(21 * MINUTE)
    request = invite(device)

    result = await notifier.send(request)

    assert (result.outcome, result.attempts) == (Outcome.ACCEPTED, 2)
    first, second = [r for r in sim.requests if r.apns_id == request.apns_id]
    assert first.reason == "ExpiredProviderToken" and second.status == 200
    assert token_of(first) != token_of(second)
    # The refused token's connection is retired: the new token starts on a new one.
    assert first.connection_id != second.connection_id
    assert len(device.inbox) == 2


async def test_clock_far_behind_fails_without_a_signing_storm(
    make_notifier: MakeNotifier, sim: APNsSimulator, clock: ManualClock
) -> None:
    ours = ManualClock(start=clock())
    notifier = make_notifier(clock=ours)
    device = sim.add_device(VOIP_TOPIC)
    clock.advance(2 * 60 * MINUTE)

    first = await notifier.send(invite(device))
    second = await notifier.send(invite(device))

    assert (first.outcome, first.reason, first.attempts) == (Outcome.FAILED, "ExpiredProviderToken", 2)
    assert first.likely_cause and "clock is behind" in first.likely_cause
    assert (second.outcome, second.attempts) == (Outcome.FAILED, 1)
    assert notifier.tokens is not None and notifier.tokens.issued == 2
    assert device.inbox == []


async def test_keys_and_tokens_never_reach_the_logs(
    make_notifier: MakeNotifier,
    sim: APNsSimulator,
    key: SigningKey,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apnsim import Fault

    caplog.set_level(logging.DEBUG)
    notifier = make_notifier()
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.connection_reset(), token=device.token)
    sim.inject(Fault.internal_server_error(), token=device.token)
    gone = sim.add_device(VOIP_TOPIC)
    gone.unregister()

    await notifier.send(invite(device))
    await notifier.send(invite(gone))

    tokens = {token_of(r).removeprefix("bearer ") for r in sim.requests}
    key_body = "".join(key.private_pem.strip().splitlines()[1:-1])
    written = caplog.text + capsys.readouterr().out + repr(notifier.config) + repr(notifier.tokens)
    assert "apns push not accepted" in written
    for secret in (*tokens, key_body[:40], key_body[-40:]):
        assert secret not in written.replace("\n", "")
    assert KEY_ID in repr(notifier.tokens) and TEAM_ID in repr(notifier.tokens)
