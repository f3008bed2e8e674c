"""Helpers for the operators' tests: tokens, and calls placed the way apps place them."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import DeviceClient, RunningNode


def operator(node: RunningNode) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.auth.mint('ops-alice', 'operator')}"}


async def ops_get(node: RunningNode, path: str, **params: Any) -> httpx.Response:
    return await node.http().get(path, params=params, headers=operator(node))


async def place_call(caller: DeviceClient, callee: str) -> str:
    started = await caller.request({"type": "call.start", "callee": callee})
    assert started["type"] == "call.started", started
    return str(started["call_id"])
