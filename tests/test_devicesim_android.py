"""Simulated Android phones (voip.devicesim.AndroidPhone) against a real node, real Redis
and the FCM simulator (with an iPhone on the APNs simulator calling them): what the app
sees and does, from its event log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from apnsim import APNsSimulator
from fcmsim import FCMSimulator
from tests.conftest import BUNDLE
from tests.test_devicesim import until
from voip.devicesim import AndroidPhone, Backend, EventLog, Phone, Policy


class World:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.log = EventLog()
        self.phones: list[Phone] = []

    async def phone(
        self,
        kind: type[Phone],
        user: str,
        device: str,
        *,
        online: bool = True,
        policy: Policy | None = None,
        name: str | None = None,
    ) -> Any:
        phone = kind(self.backend, user, device, policy=policy, log=self.log, name=name)
        self.phones.append(phone)
        await phone.install(online=online)
        return phone

    async def close(self) -> None:
        for phone in self.phones:
            await phone.aclose()
        assert not self.log.find("app.error"), self.log.find("app.error")


@pytest.fixture
async def world(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]], fcm: tuple[FCMSimulator, dict[str, str]]
) -> AsyncIterator[World]:
    (apns_sim, apns_settings), (fcm_sim, fcm_settings) = apns, fcm
    node = await node_factory(**apns_settings, **fcm_settings)
    made = World(Backend(node.base_url, node.auth, apns_sim, BUNDLE, fcm_sim))
    yield made
    await made.close()


async def test_an_android_phone_is_rung_by_an_iphone_and_answers(world: World) -> None:
    alice = await world.phone(Phone, "alice", "a-iphone", name="Alice")
    await alice.open_app()
    bob: AndroidPhone = await world.phone(AndroidPhone, "bob", "b-pixel", policy=Policy.answer(after=0.1))
    call_id = await alice.call("bob")

    await bob.wait_for("callkit.connected", call_id=call_id)
    await alice.wait_for("callkit.connected", call_id=call_id)
    # The data message, then the status check, and only then the call shown.
    kinds = bob.log.kinds(device="b-pixel", call_id=call_id)
    assert kinds.index("push.received") < kinds.index("status.checked") < kinds.index("callkit.reported")
    [reported] = bob.events("callkit.reported", call_id=call_id)
    assert reported.detail["caller"] == "Alice" and reported.detail["source"] == "push"


async def test_an_offline_android_phone_wakes_to_the_cancellation_and_shows_nothing(world: World) -> None:
    alice = await world.phone(Phone, "alice", "a-iphone")
    await alice.open_app()
    bob: AndroidPhone = await world.phone(AndroidPhone, "bob", "b-pixel", online=False)
    call_id = await alice.call("bob")
    assert world.backend.fcm is not None
    device = world.backend.fcm.device(bob.token)
    await until(lambda: [s.message.data["type"] for s in device.pending] == ["call.incoming"])
    await alice.hang_up(call_id)
    await until(lambda: [s.message.data["type"] for s in device.pending] == ["call.cancelled"])

    await bob.wake()
    received = await bob.wait_for("push.received", call_id=call_id)
    assert received.detail["type"] == "call.cancelled" and received.detail["stored"] is True
    # No PushKit rule to obey: nothing shown, nothing asked, never rang.
    assert bob.log.kinds(device="b-pixel", call_id=call_id) == ["push.received", "push.not_reported"]
    assert call_id not in bob.calls
