"""Devices over HTTP: register, update, list, delete, the per-user cap, and users kept apart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.conftest import RunningNode

TOKEN_A = "a1" * 32
TOKEN_B = "b2" * 40


class Api:
    def __init__(self, node: RunningNode, user: str) -> None:
        self.client = node.http()
        self.headers = {"Authorization": f"Bearer {node.auth.mint(user, 'device')}"}

    async def put(self, device: str, **body: Any) -> httpx.Response:
        return await self.client.put(f"/v1/devices/{device}", json=body, headers=self.headers)

    async def delete(self, device: str) -> httpx.Response:
        return await self.client.delete(f"/v1/devices/{device}", headers=self.headers)

    async def devices(self) -> list[dict[str, Any]]:
        response = await self.client.get("/v1/devices", headers=self.headers)
        assert response.status_code == 200
        return response.json()["devices"]  # type: ignore[no-any-return]


async def tick() -> None:
    await asyncio.sleep(0.003)  # timestamps are in ms


async def test_register_then_update(node: RunningNode) -> None:
    api = Api(node, "alice")
    before = int(time.time() * 1000)
    created = await api.put(
        "phone",
        voip_token=TOKEN_A.upper(),
        apns_environment="sandbox",
        bundle_id="com.example.caller",
        alert_token=TOKEN_B,
    )
    assert created.status_code == 201
    first = created.json()
    assert first["device_id"] == "phone"
    assert first["voip_token"] == TOKEN_A  # stored lower-case
    assert first["apns_environment"] == "sandbox" and first["bundle_id"] == "com.example.caller"
    assert first["alert_token"] == TOKEN_B
    assert before <= first["registered_at"] == first["updated_at"] == first["token_registered_at"] <= before + 5000
    assert first["dropped_devices"] == []

    # The same token again (another field changed): the token's registration time stays.
    await tick()
    same = await api.put("phone", voip_token=TOKEN_A, apns_environment="production")
    assert same.status_code == 200
    second = same.json()
    assert second["registered_at"] == first["registered_at"]
    assert second["token_registered_at"] == first["token_registered_at"]
    assert second["updated_at"] > first["updated_at"]
    assert second["apns_environment"] == "production"

    # A new token: its registration time moves; the device's does not.
    await tick()
    third = (await api.put("phone", voip_token=TOKEN_B, apns_environment="production")).json()
    assert third["registered_at"] == first["registered_at"]
    assert third["token_registered_at"] > second["token_registered_at"]
    assert third["token_registered_at"] == third["updated_at"]

    stored = await node.node.stores.devices.get("alice", "phone")
    assert stored is not None
    assert {k: v for k, v in third.items() if k not in ("device_id", "dropped_devices")} == stored


async def test_list_is_mine_and_sorted(node: RunningNode) -> None:
    alice, bob = Api(node, "alice"), Api(node, "bob")
    for device in ("watch", "ipad", "phone"):
        assert (await alice.put(device, voip_token=TOKEN_A)).status_code == 201
    assert (await bob.put("bobs-phone", voip_token=TOKEN_B)).status_code == 201
    listed = await alice.devices()
    assert [d["device_id"] for d in listed] == ["ipad", "phone", "watch"]
    assert all(d["voip_token"] == TOKEN_A for d in listed)
    assert [d["device_id"] for d in await bob.devices()] == ["bobs-phone"]
    assert await Api(node, "carol").devices() == []


async def test_delete(node: RunningNode) -> None:
    api = Api(node, "alice")
    await api.put("phone", voip_token=TOKEN_A)
    await api.put("ipad", voip_token=TOKEN_B)
    deleted = await api.delete("phone")
    assert deleted.status_code == 204 and deleted.content == b""
    assert [d["device_id"] for d in await api.devices()] == ["ipad"]
    again = await api.delete("phone")
    assert again.status_code == 404
    assert again.json()["error"] == "unknown_device"
    never = await api.delete("never-registered")
    assert never.status_code == 404 and never.json()["error"] == "unknown_device"
    # Registering again after a delete is a new registration.
    await tick()
    back = await api.put("phone", voip_token=TOKEN_A)
    assert back.status_code == 201


async def test_users_cannot_see_or_delete_each_others_devices(node: RunningNode) -> None:
    alice, mallory = Api(node, "alice"), Api(node, "mallory")
    await alice.put("phone", voip_token=TOKEN_A, apns_environment="sandbox")
    original = await node.node.stores.devices.get("alice", "phone")

    assert (await mallory.delete("phone")).status_code == 404
    assert await mallory.devices() == []
    # The same device id under another user is that user's own device.
    taken = await mallory.put("phone", voip_token=TOKEN_B)
    assert taken.status_code == 201
    assert [d["voip_token"] for d in await mallory.devices()] == [TOKEN_B]
    assert await node.node.stores.devices.get("alice", "phone") == original
    assert [d["voip_token"] for d in await alice.devices()] == [TOKEN_A]
    assert (await mallory.delete("phone")).status_code == 204
    assert await node.node.stores.devices.get("alice", "phone") == original


async def test_per_user_cap_drops_the_least_recently_registered(node_factory: Any) -> None:
    node = await node_factory(max_devices_per_user=3)
    alice, bob = Api(node, "alice"), Api(node, "bob")
    for device in ("d1", "d2", "d3"):
        assert (await alice.put(device, voip_token=TOKEN_A)).json()["dropped_devices"] == []
        await tick()
    # Bob's devices do not count against Alice's cap.
    for device in ("b1", "b2", "b3"):
        await bob.put(device, voip_token=TOKEN_B)
    # d1 registers again: d2 is now the least recently registered.
    assert (await alice.put("d1", voip_token=TOKEN_A)).json()["dropped_devices"] == []
    await tick()
    fourth = await alice.put("d4", voip_token=TOKEN_A)
    assert fourth.status_code == 201
    assert fourth.json()["dropped_devices"] == ["d2"]
    assert [d["device_id"] for d in await alice.devices()] == ["d1", "d3", "d4"]
    await tick()
    assert (await alice.put("d5", voip_token=TOKEN_A)).json()["dropped_devices"] == ["d3"]
    assert [d["device_id"] for d in await alice.devices()] == ["d1", "d4", "d5"]
    assert [d["device_id"] for d in await bob.devices()] == ["b1", "b2", "b3"]
    # A dropped device is gone: deleting it is a 404.
    assert (await alice.delete("d2")).status_code == 404


async def test_cap_of_one_keeps_only_the_newest(node_factory: Any) -> None:
    node = await node_factory(max_devices_per_user=1)
    alice = Api(node, "alice")
    await alice.put("old", voip_token=TOKEN_A)
    await tick()
    assert (await alice.put("old", voip_token=TOKEN_B)).json()["dropped_devices"] == []
    await tick()
    assert (await alice.put("new", voip_token=TOKEN_A)).json()["dropped_devices"] == ["old"]
    assert [d["device_id"] for d in await alice.devices()] == ["new"]


async def test_a_device_without_a_voip_token(node: RunningNode) -> None:
    # A device may register before PushKit hands it a token; it is listed, with no token.
    api = Api(node, "alice")
    response = await api.client.put("/v1/devices/fresh", content=b"", headers=api.headers)
    assert response.status_code == 201
    body = response.json()
    assert body["voip_token"] is None and body["apns_environment"] == "production"
    assert [d["device_id"] for d in await api.devices()] == ["fresh"]


async def test_same_token_in_upper_case_is_the_same_token(node: RunningNode) -> None:
    client = node.http()
    headers = {"Authorization": f"Bearer {node.auth.mint('alice', 'device')}"}
    first = (await client.put("/v1/devices/phone", json={"voip_token": "ab" * 32}, headers=headers)).json()
    await asyncio.sleep(0.003)
    again = (await client.put("/v1/devices/phone", json={"voip_token": "AB" * 32}, headers=headers)).json()
    assert again["voip_token"] == first["voip_token"] == "ab" * 32
    assert again["token_registered_at"] == first["token_registered_at"]


async def test_the_stored_record_and_its_answer_keep_their_keys_and_order(node: RunningNode) -> None:
    api = Api(node, "alice")
    response = await api.put(
        "iphone", voip_token=TOKEN_A.upper(), apns_environment="sandbox", bundle_id="com.example.app"
    )
    body = response.json()
    stamp = body["registered_at"]
    assert body["updated_at"] == body["token_registered_at"] == stamp
    assert response.content == (
        b'{"device_id":"iphone","voip_token":"' + TOKEN_A.encode() + b'","apns_environment":"sandbox",'
        b'"bundle_id":"com.example.app","alert_token":null,"registered_at":%d,"updated_at":%d,'
        b'"token_registered_at":%d,"dropped_devices":[]}' % (stamp, stamp, stamp)
    )
    stored = await node.node.stores.devices.get("alice", "iphone")
    assert stored is not None and list(stored) == [
        "voip_token",
        "apns_environment",
        "bundle_id",
        "alert_token",
        "registered_at",
        "updated_at",
        "token_registered_at",
    ]


async def test_a_token_apns_refused_shows_when_it_was_dropped_until_the_device_registers_again(
    node: RunningNode,
) -> None:
    api = Api(node, "alice")
    first = (await api.put("iphone", voip_token=TOKEN_A)).json()
    assert await node.node.stores.devices.drop_voip_token("alice", "iphone", TOKEN_A, None)
    [listed] = await api.devices()
    assert listed["voip_token"] is None
    assert listed["token_dropped_at"] >= first["registered_at"]
    await tick()
    again = (await api.put("iphone", voip_token=TOKEN_A)).json()
    assert "token_dropped_at" not in again
    assert again["registered_at"] == first["registered_at"]
    # The token counts as new: a 410 stamped before this registration must not drop it.
    assert again["token_registered_at"] == again["updated_at"] > first["token_registered_at"]
