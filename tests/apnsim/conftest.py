from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aioapns import APNs

from apnsim import APNsSimulator, ManualClock, SigningKey, client_ssl_context
from tests.apnsim.h2client import RawH2Client

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE_ID = "com.example.caller"
VOIP_TOPIC = f"{BUNDLE_ID}.voip"


def point_at_simulator(client: APNs, sim: APNsSimulator) -> APNs:
    """Aim an aioapns client at the simulator without touching aioapns' code.

    aioapns dials ``pool.protocol_class.APNS_SERVER:APNS_PORT`` and verifies TLS
    with the ``ssl_context`` it was given; both are ordinary attributes.
    """
    host, port = sim.endpoint.rsplit(":", 1)
    base = client.pool.protocol_class
    client.pool.protocol_class = type(
        f"Simulated{base.__name__}", (base,), {"APNS_SERVER": host, "APNS_PORT": int(port)}
    )
    return client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


@pytest.fixture
async def sim(tmp_path: Path, clock: ManualClock) -> AsyncIterator[APNsSimulator]:
    async with APNsSimulator(tmp_path / "apns", clock=clock) as simulator:
        yield simulator


@pytest.fixture
def signing_key(sim: APNsSimulator) -> SigningKey:
    return sim.create_key(TEAM_ID, KEY_ID)


MakeClient = Callable[..., APNs]


@pytest.fixture
async def make_client(sim: APNsSimulator) -> AsyncIterator[MakeClient]:
    clients: list[APNs] = []

    def make(
        key: SigningKey,
        topic: str = VOIP_TOPIC,
        *,
        use_sandbox: bool = True,
        target: APNsSimulator | None = None,
        **options: Any,
    ) -> APNs:
        target = target or sim
        client = APNs(
            key=key.private_pem,
            key_id=key.key_id,
            team_id=key.team_id,
            topic=topic,
            use_sandbox=use_sandbox,
            ssl_context=client_ssl_context(target.ca_file),
            **options,
        )
        clients.append(client)
        return point_at_simulator(client, target)

    yield make
    for client in clients:
        client.pool.close()


@pytest.fixture
async def apns(make_client: MakeClient, signing_key: SigningKey) -> APNs:
    return make_client(signing_key)


@pytest.fixture
async def raw(sim: APNsSimulator) -> AsyncIterator[RawH2Client]:
    client = await RawH2Client.connect(sim)
    yield client
    await client.close()


OpenRaw = Callable[[], Awaitable[RawH2Client]]


@pytest.fixture
async def open_raw(sim: APNsSimulator) -> AsyncIterator[OpenRaw]:
    clients: list[RawH2Client] = []

    async def open_() -> RawH2Client:
        client = await RawH2Client.connect(sim)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.close()


_tokens: dict[tuple[str, str, int | None], str] = {}


def provider_token(key: SigningKey, issued_at: int | None = None) -> str:
    """The JWT a well-behaved provider reuses: ECDSA signatures differ on every signing,
    and APNs counts a differently signed token as a token update."""
    cache_key = (key.private_pem, key.key_id, issued_at)
    if cache_key not in _tokens:
        _tokens[cache_key] = key.provider_token(issued_at if issued_at is not None else int(time.time()))
    return _tokens[cache_key]


def push_headers(
    token: str,
    key: SigningKey | None,
    *,
    topic: str | None = VOIP_TOPIC,
    push_type: str | None = "voip",
    issued_at: int | None = None,
    method: str = "POST",
    path: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    authority: str = "api.sandbox.push.apple.com",
) -> list[tuple[str, str]]:
    headers = [
        (":method", method),
        (":scheme", "https"),
        (":path", path if path is not None else f"/3/device/{token}"),
        (":authority", authority),
    ]
    if key is not None:
        headers.append(("authorization", f"bearer {provider_token(key, issued_at)}"))
    if topic is not None:
        headers.append(("apns-topic", topic))
    if push_type is not None:
        headers.append(("apns-push-type", push_type))
    headers += extra or []
    return headers


def new_apns_id() -> str:
    return str(uuid.uuid4())


VOIP_PAYLOAD = b'{"aps":{},"call_id":"c-1","caller":"alice"}'
