"""Operators only: every operator route and the live feed refuse devices, expired tokens
and strangers, with JSON bodies, before doing anything."""

from __future__ import annotations

import uuid

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningNode
from voip.auth import Authenticator

OPERATOR_ROUTES = [
    "/v1/ops/calls",
    f"/v1/ops/calls/{uuid.uuid4()}",
    "/v1/ops/devices/bob",
    "/v1/ops/summary",
    "/v1/ops/simulator/pushes",
    "/metrics",
]


def credentials(node: RunningNode) -> dict[str, tuple[str | None, int]]:
    """name -> (Authorization header, expected status)"""
    return {
        "none": (None, 401),
        "not bearer": (f"Basic {node.auth.mint('ops', 'operator')}", 401),
        "garbage": ("Bearer not-a-jwt", 401),
        "expired": (f"Bearer {node.auth.mint('ops', 'operator', ttl=-5)}", 401),
        "forged": (f"Bearer {Authenticator('another-secret-' + 'y' * 32).mint('ops', 'operator')}", 401),
        "device": (f"Bearer {node.auth.mint('bob', 'device')}", 403),
    }


@pytest.mark.parametrize("path", OPERATOR_ROUTES)
async def test_operator_routes_refuse_everyone_else(node: RunningNode, path: str) -> None:
    client = node.http()
    for name, (header, status) in credentials(node).items():
        headers = {"Authorization": header} if header else {}
        response = await client.get(path, headers=headers)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == ("forbidden" if status == 403 else "unauthorized"), name
    allowed = await client.get(path, headers={"Authorization": f"Bearer {node.auth.mint('ops', 'operator')}"})
    assert allowed.status_code in (200, 404), allowed.text


async def test_live_feed_refuses_before_accepting(node: RunningNode) -> None:
    url = node.base_url.replace("http://", "ws://") + "/v1/ops/live"
    for name, (header, status) in credentials(node).items():
        headers = {"Authorization": header} if header else {}
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url, additional_headers=headers)
        assert refused.value.response.status_code == status, name
        assert b'"error"' in refused.value.response.body
    for token, status in ((node.auth.mint("bob", "device"), 403), (node.auth.mint("o", "operator", ttl=-5), 401)):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{url}?access_token={token}")
        assert refused.value.response.status_code == status


async def test_the_page_itself_needs_no_token_and_holds_no_data(node: RunningNode) -> None:
    client = node.http()
    page = await client.get("/ops")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("ops.js", "ops.css"):
        assert (await client.get(f"/ops/{asset}")).status_code == 200
    assert (await client.get("/ops/secrets.txt")).status_code == 404
