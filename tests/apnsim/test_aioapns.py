"""The real client path: aioapns 4.0, pointed at the simulator by attribute, not by patching."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aioapns import APNs, NotificationRequest, PushType
from aioapns.exceptions import MaxAttemptsExceeded

from apnsim import APNsSimulator, Environment, ManualClock, SigningKey
from tests.apnsim.conftest import BUNDLE_ID, VOIP_TOPIC, MakeClient


def voip_push(token: str, **options: object) -> NotificationRequest:
    return NotificationRequest(
        device_token=token,
        message={"aps": {}, "call_id": "c-42", "caller": "alice"},
        push_type=PushType.VOIP,
        **options,  # type: ignore[arg-type]
    )


async def test_voip_push_is_accepted_recorded_and_delivered(
    apns: APNs, sim: APNsSimulator, signing_key: SigningKey
) -> None:
    device = sim.add_device(VOIP_TOPIC)
    request = voip_push(device.token, priority=10, time_to_live=30, collapse_key="call-c-42")

    result = await apns.send_notification(request)

    assert result.is_successful
    assert result.notification_id == request.notification_id
    record = await sim.wait_for(lambda r: r.apns_id == request.notification_id and r.answered)
    assert record.status == 200 and record.reason is None
    assert record.token == device.token
    assert record.topic == VOIP_TOPIC and record.push_type == "voip"
    assert record.header("apns-priority") == "10"
    assert record.header("apns-collapse-id") == "call-c-42"
    assert (record.header("authorization") or "").startswith("bearer ")
    assert record.payload == request.message
    [delivery] = device.inbox
    assert delivery.push.apns_id == request.notification_id
    assert delivery.push.payload == request.message
    assert delivery.push.expiration is not None and not delivery.stored


async def test_concurrent_pushes_respect_the_stream_limit(apns: APNs, sim: APNsSimulator) -> None:
    devices = [sim.add_device(VOIP_TOPIC) for _ in range(20)]

    results = await asyncio.gather(*(apns.send_notification(voip_push(d.token)) for d in devices))

    assert all(r.is_successful for r in results)
    assert all(len(d.inbox) == 1 for d in devices)
    assert sim.stream_count == 20
    assert all(c.stream_limit == 1000 for c in sim.connections)


async def test_unregistered_token_gives_410_with_timestamp(apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    device.unregister(timestamp_ms=1_712_345_678_901)

    result = await apns.send_notification(voip_push(device.token))

    assert (result.status, result.description) == ("410", "Unregistered")
    assert result.timestamp == 1_712_345_678_901


async def test_expired_provider_token(apns: APNs, sim: APNsSimulator, clock: ManualClock) -> None:
    clock.advance(2 * 3600)

    result = await apns.send_notification(voip_push(secrets.token_hex(32)))

    assert (result.status, result.description) == ("403", "ExpiredProviderToken")


async def test_unknown_key_is_invalid_provider_token(make_client: MakeClient, sim: APNsSimulator) -> None:
    from apnsim import generate_signing_key

    client = make_client(generate_signing_key("TEAM000000", "NOTTRUSTED"))

    result = await client.send_notification(voip_push(secrets.token_hex(32)))

    assert (result.status, result.description) == ("403", "InvalidProviderToken")


async def test_voip_push_type_needs_the_voip_topic(make_client: MakeClient, signing_key: SigningKey) -> None:
    client = make_client(signing_key, topic=BUNDLE_ID)

    result = await client.send_notification(voip_push(secrets.token_hex(32)))

    assert (result.status, result.description) == ("400", "DeviceTokenNotForTopic")


async def test_sandbox_token_against_production(
    make_client: MakeClient, tmp_path, signing_key: SigningKey, sim: APNsSimulator
) -> None:
    async with APNsSimulator(tmp_path / "prod", environment=Environment.PRODUCTION) as production:
        production.register_key(signing_key.team_id, signing_key.key_id, signing_key.public_pem)
        sandbox_device = production.add_device(VOIP_TOPIC, environment=Environment.SANDBOX)
        production_device = production.add_device(VOIP_TOPIC)
        client = make_client(signing_key, use_sandbox=False, target=production)

        mismatched = await client.send_notification(voip_push(sandbox_device.token))
        matched = await client.send_notification(voip_push(production_device.token))
        client.pool.close()

    assert (mismatched.status, mismatched.description) == ("400", "BadDeviceToken")
    assert matched.is_successful


async def test_payload_too_large_for_voip(apns: APNs) -> None:
    request = NotificationRequest(secrets.token_hex(32), {"aps": {}, "pad": "x" * 5200}, push_type=PushType.VOIP)

    result = await apns.send_notification(request)

    assert (result.status, result.description) == ("413", "PayloadTooLarge")


async def test_aioapns_gives_up_when_the_simulator_is_gone(
    make_client: MakeClient, signing_key: SigningKey, sim: APNsSimulator
) -> None:
    client = make_client(signing_key, max_connection_attempts=1)
    await sim.stop()

    with pytest.raises(MaxAttemptsExceeded):
        await client.send_notification(voip_push(secrets.token_hex(32)))
