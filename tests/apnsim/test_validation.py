"""Every documented rejection, sent with a bare HTTP/2 client (aioapns cannot produce most)."""

from __future__ import annotations

import json
import secrets

import pytest

from apnsim import APNsSimulator, Environment, SigningKey
from apnsim.validation import UUID_PATTERN
from tests.apnsim.conftest import BUNDLE_ID, VOIP_PAYLOAD, VOIP_TOPIC, new_apns_id, push_headers
from tests.apnsim.h2client import RawH2Client

TOKEN = secrets.token_hex(32)


def _case(
    expected_status: int, reason: str, *, body: bytes = VOIP_PAYLOAD, **header_options: object
) -> tuple[dict[str, object], bytes, int, str]:
    return header_options, body, expected_status, reason


CASES = {
    "method": _case(405, "MethodNotAllowed", method="GET", body=b""),
    "path": _case(404, "BadPath", path="/3/devices/" + TOKEN),
    "path-version": _case(404, "BadPath", path="/2/device/" + TOKEN),
    "missing-token": _case(400, "MissingDeviceToken", path="/3/device/"),
    "token-not-hex": _case(400, "BadDeviceToken", path="/3/device/" + "zz" * 32),
    "token-short": _case(400, "BadDeviceToken", path="/3/device/" + "ab" * 16),
    "apns-id": _case(400, "BadMessageId", extra=[("apns-id", "not-a-uuid")]),
    "topic": _case(400, "MissingTopic", topic=None),
    "push-type-unknown": _case(400, "InvalidPushType", push_type="ring"),
    "push-type-alert-on-voip-topic": _case(400, "InvalidPushType", push_type="alert"),
    "voip-without-voip-topic": _case(400, "DeviceTokenNotForTopic", topic=BUNDLE_ID),
    "priority-value": _case(400, "BadPriority", extra=[("apns-priority", "7")]),
    "priority-text": _case(400, "BadPriority", extra=[("apns-priority", "high")]),
    "expiration": _case(400, "BadExpirationDate", extra=[("apns-expiration", "tomorrow")]),
    "expiration-negative": _case(400, "BadExpirationDate", extra=[("apns-expiration", "-1")]),
    "collapse-id": _case(400, "BadCollapseId", extra=[("apns-collapse-id", "c" * 65)]),
    "duplicate-topic": _case(400, "DuplicateHeaders", extra=[("apns-topic", VOIP_TOPIC)]),
    "payload-empty": _case(400, "PayloadEmpty", body=b""),
    "payload-array": _case(400, "BadPayload", body=b"[1, 2]"),
    "payload-not-json": _case(400, "BadPayload", body=b"ring ring"),
    "payload-voip-too-large": _case(413, "PayloadTooLarge", body=json.dumps({"pad": "x" * 5120}).encode()),
    "payload-alert-too-large": _case(
        413, "PayloadTooLarge", topic=BUNDLE_ID, push_type="alert", body=json.dumps({"pad": "x" * 4096}).encode()
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_rejection_with_apples_reason(
    case: str, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
) -> None:
    options, body, expected_status, reason = CASES[case]
    headers = push_headers(TOKEN, signing_key, **options)  # type: ignore[arg-type]
    response = await raw.request(headers, body)

    assert (response.status, response.reason) == (expected_status, reason)
    assert response.json == {"reason": reason}
    assert "apns-id" in response.headers
    assert "apns-unique-id" not in response.headers
    record = await sim.wait_for(lambda r: r.answered)
    assert (record.status, record.reason) == (expected_status, reason)
    assert not sim.accepted


async def test_payload_limits_are_inclusive(raw: RawH2Client, signing_key: SigningKey, sim: APNsSimulator) -> None:
    voip = b'{"p":"' + b"v" * (5120 - 8) + b'"}'
    alert = b'{"p":"' + b"a" * (4096 - 8) + b'"}'
    assert (len(voip), len(alert)) == (5120, 4096)

    voip_response = await raw.request(push_headers(TOKEN, signing_key), voip)
    alert_response = await raw.request(
        push_headers(secrets.token_hex(32), signing_key, topic=BUNDLE_ID, push_type="alert"), alert
    )

    assert (voip_response.status, alert_response.status) == (200, 200)


async def test_boundary_values_are_accepted(raw: RawH2Client, signing_key: SigningKey) -> None:
    headers = push_headers(
        TOKEN,
        signing_key,
        extra=[
            ("apns-priority", "1"),
            ("apns-expiration", "0"),
            ("apns-collapse-id", "c" * 64),
            ("apns-id", new_apns_id()),
        ],
    )

    response = await raw.request(headers, VOIP_PAYLOAD)

    assert response.status == 200, response.body


async def test_success_echoes_apns_id_and_adds_unique_id_in_sandbox(
    raw: RawH2Client, signing_key: SigningKey, sim: APNsSimulator
) -> None:
    apns_id = new_apns_id()

    response = await raw.request(push_headers(TOKEN, signing_key, extra=[("apns-id", apns_id)]), VOIP_PAYLOAD)

    assert response.status == 200
    assert response.body == b""
    assert response.headers["apns-id"] == apns_id
    assert UUID_PATTERN.fullmatch(response.headers["apns-unique-id"])
    push = sim.accepted[-1]
    assert (push.apns_id, push.unique_id) == (apns_id, response.headers["apns-unique-id"])
    assert push.payload == json.loads(VOIP_PAYLOAD)


async def test_absent_apns_id_is_generated_and_echoed(raw: RawH2Client, signing_key: SigningKey) -> None:
    response = await raw.request(push_headers(TOKEN, signing_key), VOIP_PAYLOAD)

    assert UUID_PATTERN.fullmatch(response.headers["apns-id"])


async def test_push_type_defaults_from_topic_when_header_absent(
    raw: RawH2Client, signing_key: SigningKey, sim: APNsSimulator
) -> None:
    response = await raw.request(push_headers(TOKEN, signing_key, push_type=None), VOIP_PAYLOAD)

    assert response.status == 200
    assert sim.accepted[-1].push_type == "voip"


async def test_production_has_no_unique_id(tmp_path, signing_key: SigningKey) -> None:
    async with APNsSimulator(tmp_path / "prod", environment="production") as production:
        key = production.create_key(signing_key.team_id, signing_key.key_id)
        client = await RawH2Client.connect(production)
        try:
            response = await client.request(push_headers(TOKEN, key), VOIP_PAYLOAD)
        finally:
            await client.close()

    assert response.status == 200
    assert "apns-unique-id" not in response.headers


class TestDeviceChecks:
    async def test_strict_mode_rejects_unknown_tokens(
        self, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
    ) -> None:
        sim.strict_tokens = True
        known = sim.add_device(VOIP_TOPIC)

        unknown_response = await raw.request(push_headers(TOKEN, signing_key), VOIP_PAYLOAD)
        known_response = await raw.request(push_headers(known.token, signing_key), VOIP_PAYLOAD)

        assert (unknown_response.status, unknown_response.reason) == (400, "BadDeviceToken")
        assert known_response.status == 200

    async def test_lenient_mode_creates_an_online_device(
        self, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
    ) -> None:
        response = await raw.request(push_headers(TOKEN, signing_key), VOIP_PAYLOAD)

        device = sim.device(TOKEN)
        assert response.status == 200
        assert (device.auto_created, device.online, device.topic) == (True, True, VOIP_TOPIC)
        assert [d.push.apns_id for d in device.inbox] == [response.headers["apns-id"]]

    async def test_token_of_the_other_environment_is_a_bad_device_token(
        self, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
    ) -> None:
        device = sim.add_device(VOIP_TOPIC, environment=Environment.PRODUCTION)

        response = await raw.request(push_headers(device.token, signing_key), VOIP_PAYLOAD)

        assert (response.status, response.reason) == (400, "BadDeviceToken")

    async def test_token_registered_for_another_topic(
        self, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
    ) -> None:
        device = sim.add_device("com.example.other.voip")

        response = await raw.request(push_headers(device.token, signing_key), VOIP_PAYLOAD)

        assert (response.status, response.reason) == (400, "DeviceTokenNotForTopic")

    async def test_topic_outside_the_keys_apps_is_disallowed(self, raw: RawH2Client, sim: APNsSimulator) -> None:
        key = sim.create_key("TEAM999999", "KEY9999999", bundle_ids=["com.example.mine"])

        response = await raw.request(push_headers(TOKEN, key), VOIP_PAYLOAD)

        assert (response.status, response.reason) == (400, "TopicDisallowed")

    @pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
    async def test_invalidated_token_answers_410_with_timestamp(
        self, reason: str, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
    ) -> None:
        device = sim.add_device(VOIP_TOPIC)
        if reason == "Unregistered":
            device.unregister(timestamp_ms=1_700_000_000_123)
        else:
            device.expire_token(timestamp_ms=1_700_000_000_123)

        response = await raw.request(push_headers(device.token, signing_key), VOIP_PAYLOAD)

        assert response.status == 410
        assert response.json == {"reason": reason, "timestamp": 1_700_000_000_123}
