"""A real apnsim over loopback TLS, and notifiers pointed at it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aioapns import APNs

from apnsim import APNsSimulator, Device, SigningKey
from voip.push import APNsConfig, APNsNotifier, Caller, PushRequest, voip_invite

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE_ID = "com.example.caller"
VOIP_TOPIC = f"{BUNDLE_ID}.voip"
ALICE = Caller(id="u-alice", display_name="Alice")

MakeNotifier = Callable[..., APNsNotifier]


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[APNsSimulator]:
    async with APNsSimulator(tmp_path / "apns") as simulator:
        yield simulator


@pytest.fixture
def key(sim: APNsSimulator) -> SigningKey:
    return sim.create_key(TEAM_ID, KEY_ID)


def config_for(sim: APNsSimulator, key: SigningKey, **overrides: Any) -> APNsConfig:
    options: dict[str, Any] = dict(
        bundle_id=BUNDLE_ID,
        key_id=key.key_id,
        team_id=key.team_id,
        key_pem=key.private_pem,
        endpoint=sim.endpoint,
        ca_file=sim.ca_file,
        response_timeout=1.0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    options.update(overrides)
    return APNsConfig(**options)


@pytest.fixture
async def make_notifier(sim: APNsSimulator, key: SigningKey) -> AsyncIterator[MakeNotifier]:
    made: list[APNsNotifier] = []

    def make(
        *, target: APNsSimulator | None = None, signing_key: SigningKey | None = None, **overrides: Any
    ) -> APNsNotifier:
        notifier = APNsNotifier(config_for(target or sim, signing_key or key, **overrides))
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        await notifier.aclose()


@pytest.fixture
async def notifier(make_notifier: MakeNotifier) -> APNsNotifier:
    return make_notifier()


def invite(
    device: Device | str, *, ttl: float = 2.0, call_id: str | None = None, environment: str = "sandbox", **options: Any
) -> PushRequest:
    token = device if isinstance(device, str) else device.token
    return voip_invite(
        bundle_id=BUNDLE_ID,
        device_token=token,
        environment=environment,
        call_id=call_id or f"call-{uuid.uuid4().hex[:12]}",
        caller=ALICE,
        ring_deadline=time.time() + ttl,
        status_url="https://voip.example.com/v1/calls/c/status?cap=x",
        **options,
    )


def plain_aioapns(sim: APNsSimulator, key: SigningKey, topic: str = VOIP_TOPIC, **options: Any) -> APNs:
    """aioapns 4.0 as documented in docs/apns-simulator.md: no fixes, only aimed at apnsim."""
    from apnsim import client_ssl_context

    client = APNs(
        key=key.private_pem,
        key_id=key.key_id,
        team_id=key.team_id,
        topic=topic,
        use_sandbox=True,
        ssl_context=client_ssl_context(sim.ca_file),
        **options,
    )
    host, port = sim.endpoint.rsplit(":", 1)
    base = client.pool.protocol_class
    client.pool.protocol_class = type("SimulatedAPNs", (base,), {"APNS_SERVER": host, "APNS_PORT": int(port)})
    return client


def requests_for(sim: APNsSimulator, apns_id: str) -> list[Any]:
    return [r for r in sim.requests if r.apns_id == apns_id]
