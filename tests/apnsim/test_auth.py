"""Provider-token authentication, as APNs applies it per connection."""

from __future__ import annotations

import secrets
import time

import jwt
import pytest

from apnsim import APNsSimulator, ManualClock, SigningKey, generate_signing_key
from tests.apnsim.conftest import VOIP_PAYLOAD, push_headers
from tests.apnsim.h2client import RawH2Client

TOKEN = secrets.token_hex(32)


def _with_authorization(value: str | None) -> list[tuple[str, str]]:
    headers = [h for h in push_headers(TOKEN, None)]
    if value is not None:
        headers.append(("authorization", value))
    return headers


async def test_missing_authorization(raw: RawH2Client) -> None:
    response = await raw.request(_with_authorization(None), VOIP_PAYLOAD)

    assert (response.status, response.reason) == (403, "MissingProviderToken")


@pytest.mark.parametrize(
    "forge",
    [
        "not-bearer",
        "garbage",
        "unknown-key",
        "wrong-signature",
        "wrong-issuer",
        "hs256",
        "no-iat",
        "iat-in-the-future",
    ],
)
async def test_invalid_provider_token(
    forge: str, raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
) -> None:
    now = int(time.time())
    impostor = generate_signing_key(signing_key.team_id, signing_key.key_id)
    claims = {"iss": signing_key.team_id, "iat": now}
    header = {"kid": signing_key.key_id}
    token = {
        "not-bearer": "Basic " + signing_key.provider_token(now),
        "garbage": "bearer not.a.jwt",
        "unknown-key": "bearer " + generate_signing_key("T", "UNKNOWNKEY").provider_token(now),
        "wrong-signature": "bearer " + impostor.provider_token(now),
        "wrong-issuer": "bearer "
        + jwt.encode({**claims, "iss": "OTHERTEAM1"}, signing_key.private_pem, "ES256", header),
        "hs256": "bearer " + jwt.encode(claims, "secret-secret-secret-secret-32b!", "HS256", header),
        "no-iat": "bearer " + jwt.encode({"iss": signing_key.team_id}, signing_key.private_pem, "ES256", header),
        "iat-in-the-future": "bearer " + signing_key.provider_token(now + 3600),
    }[forge]

    response = await raw.request(_with_authorization(token), VOIP_PAYLOAD)

    assert (response.status, response.reason) == (403, "InvalidProviderToken")


async def test_revoked_key_is_invalid(raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey) -> None:
    sim.revoke_key(signing_key.key_id)

    response = await raw.request(push_headers(TOKEN, signing_key), VOIP_PAYLOAD)

    assert (response.status, response.reason) == (403, "InvalidProviderToken")


async def test_token_older_than_an_hour_is_expired(
    raw: RawH2Client, clock: ManualClock, signing_key: SigningKey
) -> None:
    issued_at = int(clock())
    first = await raw.request(push_headers(TOKEN, signing_key, issued_at=issued_at), VOIP_PAYLOAD)
    clock.advance(3601)

    second = await raw.request(push_headers(TOKEN, signing_key, issued_at=issued_at), VOIP_PAYLOAD)

    assert first.status == 200
    assert (second.status, second.reason) == (403, "ExpiredProviderToken")


async def test_changing_token_within_20_minutes_is_too_many_updates(
    raw: RawH2Client, clock: ManualClock, signing_key: SigningKey, sim: APNsSimulator
) -> None:
    start = int(clock())
    first = await raw.request(push_headers(TOKEN, signing_key, issued_at=start), VOIP_PAYLOAD)
    clock.advance(60)
    early = await raw.request(push_headers(TOKEN, signing_key, issued_at=start + 60), VOIP_PAYLOAD)
    still_old = await raw.request(push_headers(TOKEN, signing_key, issued_at=start), VOIP_PAYLOAD)
    clock.advance(20 * 60)
    refreshed = await raw.request(push_headers(TOKEN, signing_key, issued_at=start + 1260), VOIP_PAYLOAD)

    assert first.status == 200
    assert (early.status, early.reason) == (429, "TooManyProviderTokenUpdates")
    assert still_old.status == 200
    assert refreshed.status == 200
    assert len(sim.connections[0].auth.token_changes) == 1


async def test_each_connection_has_its_own_token(open_raw, signing_key: SigningKey, clock: ManualClock) -> None:
    first, second = await open_raw(), await open_raw()

    a = await first.request(push_headers(TOKEN, signing_key, issued_at=int(clock())), VOIP_PAYLOAD)
    b = await second.request(push_headers(TOKEN, signing_key, issued_at=int(clock()) - 5), VOIP_PAYLOAD)

    assert (a.status, b.status) == (200, 200)


async def test_one_stream_until_a_valid_token_then_a_thousand(
    raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
) -> None:
    rejected = await raw.request(_with_authorization("bearer nope"), VOIP_PAYLOAD)
    limit_before = sim.connections[0].stream_limit

    accepted = await raw.request(push_headers(TOKEN, signing_key), VOIP_PAYLOAD)
    await raw.ping()

    assert rejected.status == 403
    assert limit_before == 1
    assert accepted.status == 200
    assert raw.max_concurrent_streams_history[-2:] == [1, 1000]
    assert sim.connections[0].stream_limit == 1000
