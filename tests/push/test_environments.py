"""One sender per APNs environment; configuration from the APNS_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from apnsim import APNsSimulator, Environment, SigningKey
from tests.push.conftest import BUNDLE_ID, VOIP_TOPIC, MakeNotifier, config_for, invite
from voip.push import APNsConfig, APNsNotifier, Outcome


async def test_each_push_goes_to_its_devices_environment(
    make_notifier: MakeNotifier, key: SigningKey, tmp_path: Path
) -> None:
    async with APNsSimulator(tmp_path / "prod", environment="production") as production:
        production.register_key(key.team_id, key.key_id, key.public_pem)
        notifier = make_notifier(target=production)
        phone = production.add_device(VOIP_TOPIC)
        debug_build = production.add_device(VOIP_TOPIC, environment=Environment.SANDBOX)

        delivered = await notifier.send(invite(phone, environment="production"))
        mismatch = await notifier.send(invite(debug_build, environment="production"))
        sandbox = await notifier.send(invite(debug_build, environment="sandbox"))

        assert (delivered.outcome, delivered.environment) == (Outcome.ACCEPTED, "production")
        assert (mismatch.outcome, mismatch.reason) == (Outcome.REJECTED, "BadDeviceToken")
        # The sandbox sender dialled the same endpoint (APNS_ENDPOINT serves both), on a
        # connection of its own.
        assert sandbox.environment == "sandbox"
        by_env = {env: {id(c) for c in notifier.sender(env).connections} for env in ("sandbox", "production")}
        assert len(by_env["sandbox"]) == len(by_env["production"]) == 1
        assert by_env["sandbox"] != by_env["production"]
        assert len(production.connections) == 2


async def test_without_an_endpoint_apples_hosts_are_used(key: SigningKey) -> None:
    notifier = APNsNotifier(
        APNsConfig(bundle_id=BUNDLE_ID, key_id=key.key_id, team_id=key.team_id, key_pem=key.private_pem)
    )
    try:
        sandbox, production = notifier.sender("sandbox"), notifier.sender("production")
        assert (sandbox.host, sandbox.port) == ("api.sandbox.push.apple.com", 443)
        assert (production.host, production.port) == ("api.push.apple.com", 443)
        assert sandbox.pool is not production.pool
    finally:
        await notifier.aclose()


async def test_key_file_and_warm_up(sim: APNsSimulator, key: SigningKey, tmp_path: Path) -> None:
    p8 = tmp_path / f"AuthKey_{key.key_id}.p8"
    p8.write_text(key.private_pem)
    notifier = APNsNotifier(config_for(sim, key, key_pem=None, key_file=str(p8)))
    try:
        await notifier.connect()
        assert len(sim.connections) == 2  # one per environment, before any push

        result = await notifier.send(invite(sim.add_device(VOIP_TOPIC)))

        assert (result.outcome, result.attempts) == (Outcome.ACCEPTED, 1)
        assert len(sim.connections) == 2
    finally:
        await notifier.aclose()


async def test_credentials_are_required(sim: APNsSimulator, key: SigningKey) -> None:
    with pytest.raises(ValueError, match="key"):
        APNsNotifier(config_for(sim, key, key_pem=None))


def test_notifier_needs_a_running_loop(sim_free_key: SigningKey) -> None:
    with pytest.raises(RuntimeError):
        APNsNotifier(
            APNsConfig(
                bundle_id=BUNDLE_ID,
                key_id=sim_free_key.key_id,
                team_id=sim_free_key.team_id,
                key_pem=sim_free_key.private_pem,
            )
        )


@pytest.fixture
def sim_free_key() -> SigningKey:
    from apnsim import generate_signing_key

    return generate_signing_key("TEAM123456", "KEY1234567")
