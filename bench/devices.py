"""WebSocket devices and HTTP set-up calls for the bench, as an app would make them."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from voip.auth import Authenticator


async def connect(ws_url: str, auth: Authenticator, user: str, device: str) -> ClientConnection:
    socket = await websockets.connect(
        f"{ws_url}?device_id={device}",
        additional_headers={"Authorization": f"Bearer {auth.mint(user, 'device')}"},
        max_queue=None,  # the bench reads every frame; never let the client push back
    )
    hello = orjson.loads(await socket.recv())
    if hello["type"] != "hello":
        raise RuntimeError(f"expected hello, got {hello}")
    return socket


async def register(base_url: str, auth: Authenticator, user: str, device: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.put(
            f"/v1/devices/{device}",
            json={"voip_token": secrets.token_hex(32), "apns_environment": "sandbox"},
            headers={"Authorization": f"Bearer {auth.mint(user, 'device')}"},
        )
        response.raise_for_status()


async def request(socket: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a frame and return the reply with its id (other frames are skipped)."""
    await socket.send(orjson.dumps(frame).decode())
    while True:
        reply: dict[str, Any] = orjson.loads(await socket.recv())
        if reply.get("id") == frame["id"]:
            return reply
