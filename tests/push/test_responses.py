"""Every APNs answer and what the notifier makes of it."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apnsim import APNsSimulator, Environment, Fault, Reason, generate_signing_key
from tests.push.conftest import (
    BUNDLE_ID,
    TEAM_ID,
    VOIP_TOPIC,
    MakeNotifier,
    invite,
    requests_for,
)
from voip.push import APNsNotifier, Caller, Outcome, missed_call_alert


async def test_unregistered_carries_apns_timestamp(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    device.unregister(timestamp_ms=1_712_345_678_901)

    result = await notifier.send(invite(device))

    assert (result.outcome, result.status, result.reason) == (Outcome.TOKEN_INVALID, 410, "Unregistered")
    assert result.timestamp == 1_712_345_678_901
    assert result.attempts == 1 and len(sim.requests) == 1


async def test_expired_token_carries_apns_timestamp(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    device.expire_token(timestamp_ms=1_700_000_000_000)

    result = await notifier.send(invite(device))

    assert (result.outcome, result.reason, result.timestamp) == (
        Outcome.TOKEN_INVALID,
        "ExpiredToken",
        1_700_000_000_000,
    )


async def test_bad_device_token_names_the_environment_mismatch(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    production_token = sim.add_device(VOIP_TOPIC, environment=Environment.PRODUCTION)

    result = await notifier.send(invite(production_token))

    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, 400, "BadDeviceToken")
    assert result.likely_cause and "sandbox/production mismatch" in result.likely_cause
    assert len(sim.requests) == 1


async def test_voip_token_sent_to_the_plain_topic(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    voip_device = sim.add_device(VOIP_TOPIC)
    alert = missed_call_alert(
        bundle_id=BUNDLE_ID,
        device_token=voip_device.token,
        environment="sandbox",
        call_id="c1",
        caller=Caller("u", "Bob"),
        deadline=time.time() + 60,
    )

    result = await notifier.send(alert)

    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, 400, "DeviceTokenNotForTopic")
    assert result.likely_cause and "VoIP token sent to the plain topic" in result.likely_cause
    assert len(sim.requests) == 1 and voip_device.inbox == []


async def test_alert_token_stored_as_voip_token(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    alert_device = sim.add_device(BUNDLE_ID)

    result = await notifier.send(invite(alert_device))

    assert (result.outcome, result.reason) == (Outcome.REJECTED, "DeviceTokenNotForTopic")
    assert result.likely_cause and "ordinary APNs token" in result.likely_cause


async def test_untrusted_key_is_invalid_provider_token(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    notifier = make_notifier(signing_key=generate_signing_key(TEAM_ID, "UNKNOWNKEY"))

    result = await notifier.send(invite(sim.add_device(VOIP_TOPIC)))

    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, 403, "InvalidProviderToken")
    assert result.likely_cause and "APNS_KEY_ID" in result.likely_cause
    assert len(sim.requests) == 1


async def test_key_not_allowed_for_the_app_is_topic_disallowed(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    other_app_key = sim.create_key(TEAM_ID, "OTHERAPPKY", bundle_ids=["com.example.other"])
    notifier = make_notifier(signing_key=other_app_key)

    result = await notifier.send(invite(sim.add_device(VOIP_TOPIC)))

    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, 400, "TopicDisallowed")
    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    "fault, status, reason",
    [
        (Fault.reject(Reason.FORBIDDEN), 403, "Forbidden"),
        (Fault.reject(Reason.PAYLOAD_TOO_LARGE), 413, "PayloadTooLarge"),
        (Fault.reject(Reason.BAD_TOPIC), 400, "BadTopic"),
        (Fault.reject(Reason.BAD_EXPIRATION_DATE), 400, "BadExpirationDate"),
    ],
)
async def test_refusals_are_never_retried(
    notifier: APNsNotifier, sim: APNsSimulator, fault: Fault, status: int, reason: str
) -> None:
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(fault, token=device.token, times=None)

    result = await notifier.send(invite(device))

    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, status, reason)
    assert result.attempts == 1 and len(sim.requests) == 1
    assert result.likely_cause


@pytest.mark.parametrize(
    "fault, reason",
    [
        (Fault.too_many_requests(), "TooManyRequests"),
        (Fault.internal_server_error(), "InternalServerError"),
        (Fault.service_unavailable(), "ServiceUnavailable"),
        (Fault.shutdown(), "Shutdown"),
    ],
)
async def test_transient_answers_are_retried_with_the_same_apns_id(
    notifier: APNsNotifier, sim: APNsSimulator, fault: Fault, reason: str
) -> None:
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(fault, token=device.token, times=2)
    request = invite(device)

    result = await notifier.send(request)

    assert result.outcome == Outcome.ACCEPTED and result.attempts == 3
    records = requests_for(sim, request.apns_id)
    assert [r.reason for r in records] == [reason, reason, None]
    assert len(device.inbox) == 1


async def test_shutdown_answer_retires_the_connection(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.shutdown(), token=device.token)

    result = await notifier.send(invite(device))

    assert result.outcome == Outcome.ACCEPTED
    first, second = sim.requests
    assert first.connection_id != second.connection_id


def _client_certificate(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"VoIP Services: {BUNDLE_ID}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / "voip-services.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


async def test_certificate_auth_sends_no_provider_token(
    make_notifier: MakeNotifier, sim: APNsSimulator, tmp_path: Path
) -> None:
    # apnsim models token auth only: a certificate-authenticated push reaches it without
    # an authorization header, which is exactly what APNs sees from such a provider.
    notifier = make_notifier(cert_file=str(_client_certificate(tmp_path)), key_pem=None, key_id=None, team_id=None)

    result = await notifier.send(invite(sim.add_device(VOIP_TOPIC)))

    assert notifier.tokens is None
    [record] = sim.requests
    assert record.header("authorization") is None
    assert (result.outcome, result.status, result.reason) == (Outcome.REJECTED, 403, "MissingProviderToken")
    assert result.likely_cause and "certificate" in result.likely_cause
