"""`/readyz`: Redis answers and every registered check passes, or 503 saying which failed."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from tests.conftest import RunningNode
from voip.node import NodeParts
from voip.ops import health
from voip.push import FCMNotifier, PlatformNotifiers


async def test_ready_when_redis_apns_and_fcm_answer(node: RunningNode) -> None:
    response = await node.http().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert {"status": body["status"], "checks": body["checks"]} == {
        "status": "ready",
        "checks": {"redis": "ok", "apns": "ok", "fcm": "ok"},
    }
    # How Redis keeps data is a detail (tests/resilience/test_durable_redis.py), never a check.
    assert set(body) == {"status", "checks", "details"} and "warnings" in body["details"]["redis"]
    assert (await node.http().get("/healthz")).status_code == 200


async def test_a_failing_or_hanging_check_makes_the_node_not_ready(node_factory: Any, monkeypatch) -> None:
    async def apns_unreachable() -> None:
        raise ConnectionRefusedError("api.sandbox.push.apple.com:443 refused")

    async def hangs() -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(health, "CHECK_TIMEOUT", 0.2)
    node: RunningNode = await node_factory(parts=NodeParts(readiness_checks={"apns": apns_unreachable, "slow": hangs}))

    def failures() -> float:
        return REGISTRY.get_sample_value("voip_readiness_failures_total", {"check": "apns"}) or 0.0

    before = failures()
    response = await node.http().get("/readyz")
    assert response.status_code == 503
    assert failures() == before + 1
    body = response.json()
    del body["details"]
    assert body == {
        "status": "not_ready",
        # The kind of failure only: an unauthenticated probe learns no address.
        "checks": {
            "redis": "ok",
            "apns": "failed: ConnectionRefusedError",
            "fcm": "ok",
            "slow": "timed out after 0.2 s",
        },
    }


async def test_not_ready_when_apns_is_unreachable(node: RunningNode) -> None:
    # The node's APNs (here its bundled simulator) goes away: no warm connection can be had.
    assert node.node.apns_simulator is not None
    await node.node.notifier.aclose()
    await node.node.apns_simulator.stop()
    response = await node.http().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["apns"] != "ok"


async def test_not_ready_when_fcm_gives_no_access_token(node: RunningNode) -> None:
    # The bundled FCM simulator stops trusting the node's service account: no token.
    simulator = node.node.fcm_simulator
    assert simulator is not None
    simulator.accounts.disable()
    notifier = node.node.notifier
    assert isinstance(notifier, PlatformNotifiers) and isinstance(notifier.notifiers["android"], FCMNotifier)
    notifier.notifiers["android"].tokens.forget()  # the check must fetch a new one
    response = await node.http().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["fcm"] == "failed: AccessTokenError"
