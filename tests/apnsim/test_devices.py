"""Store-and-forward as APNs does it: one pending push per device, kept until it expires."""

from __future__ import annotations

import asyncio
import secrets

from aioapns import APNs, NotificationRequest, PushType

from apnsim import APNsSimulator, Delivery, DropCause, Fault, ManualClock, SigningKey
from tests.apnsim.conftest import VOIP_PAYLOAD, VOIP_TOPIC, push_headers
from tests.apnsim.h2client import RawH2Client


def call_push(token: str, call_id: str, ttl: int | None = 60, collapse_key: str | None = None) -> NotificationRequest:
    return NotificationRequest(
        token, {"aps": {}, "call_id": call_id}, push_type=PushType.VOIP, time_to_live=ttl, collapse_key=collapse_key
    )


async def test_online_device_gets_the_push_at_once(apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    queue = device.subscribe()
    seen: list[Delivery] = []
    device.on_delivery(seen.append)

    await apns.send_notification(call_push(device.token, "c-1"))

    delivery = await asyncio.wait_for(queue.get(), 1)
    assert delivery.push.payload["call_id"] == "c-1"
    assert (delivery.stored, delivery.late) == (False, False)
    assert seen == [delivery] == device.inbox


async def test_offline_device_gets_the_stored_push_when_it_comes_online(
    apns: APNs, sim: APNsSimulator, clock: ManualClock
) -> None:
    device = sim.add_device(VOIP_TOPIC, online=False)

    result = await apns.send_notification(call_push(device.token, "c-1", ttl=60))
    stored = device.pending
    clock.advance(30)
    waiter = asyncio.create_task(device.next_delivery(timeout=1))
    await asyncio.sleep(0)
    delivery = device.go_online()

    assert result.is_successful
    assert device.inbox == [delivery]
    assert await waiter == delivery
    assert stored is not None and delivery is not None and delivery.push == stored
    assert (delivery.stored, delivery.late) == (True, False)
    assert delivery.delivered_at - delivery.push.accepted_at == 30
    assert device.pending is None


async def test_newer_push_displaces_the_stored_one(apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC, online=False)

    await apns.send_notification(call_push(device.token, "c-old"))
    await apns.send_notification(call_push(device.token, "c-new"))
    delivery = device.go_online()

    assert delivery is not None and delivery.push.payload["call_id"] == "c-new"
    [drop] = device.dropped
    assert (drop.cause, drop.push.payload["call_id"]) == (DropCause.DISPLACED, "c-old")
    assert [d.push.payload["call_id"] for d in device.inbox] == ["c-new"]


async def test_expired_stored_push_is_dropped(apns: APNs, sim: APNsSimulator, clock: ManualClock) -> None:
    device = sim.add_device(VOIP_TOPIC, online=False)

    await apns.send_notification(call_push(device.token, "c-1", ttl=30))
    clock.advance(31)
    delivery = device.go_online()

    assert delivery is None
    assert device.inbox == []
    assert [d.cause for d in device.dropped] == [DropCause.EXPIRED]


async def test_purge_drops_expired_pushes_without_the_device(
    apns: APNs, sim: APNsSimulator, clock: ManualClock
) -> None:
    device = sim.add_device(VOIP_TOPIC, online=False)
    await apns.send_notification(call_push(device.token, "c-1", ttl=30))
    clock.advance(10)

    assert sim.purge_expired() == []
    clock.advance(21)
    [drop] = sim.purge_expired()
    assert (drop.cause, device.pending) == (DropCause.EXPIRED, None)


async def test_expiration_zero_is_never_stored(raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey) -> None:
    # A literal `apns-expiration: 0`: aioapns's time_to_live=0 sends the current second
    # instead, which the simulator's clock (started a moment earlier) may not have reached.
    device = sim.add_device(VOIP_TOPIC, online=False)

    response = await raw.request(
        push_headers(device.token, signing_key, extra=[("apns-expiration", "0")]), VOIP_PAYLOAD
    )
    device.go_online()

    assert response.status == 200
    assert device.inbox == [] and device.pending is None
    assert [d.cause for d in device.dropped] == [DropCause.NOT_STORED]


async def test_late_delivery_hands_over_an_expired_push(apns: APNs, sim: APNsSimulator, clock: ManualClock) -> None:
    device = sim.add_device(VOIP_TOPIC, online=False)
    await apns.send_notification(call_push(device.token, "c-stale", ttl=30))
    sim.inject(Fault.late_delivery(), token=device.token)
    clock.advance(600)

    delivery = device.go_online()

    assert delivery is not None and delivery.late and delivery.stored
    assert delivery.push.payload["call_id"] == "c-stale"
    assert delivery.delivered_at > delivery.push.expires_at()


async def test_late_delivery_fault_does_not_consume_request_faults(apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.late_delivery(), times=None)

    result = await apns.send_notification(call_push(device.token, "c-1"))

    assert result.is_successful


async def test_collapse_id_replaces_what_the_user_sees(apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)

    for call_id in ("c-1", "c-2", "c-3"):
        await apns.send_notification(call_push(device.token, call_id, collapse_key="x" if call_id != "c-2" else None))

    assert [d.push.payload["call_id"] for d in device.inbox] == ["c-1", "c-2", "c-3"]
    assert [d.push.payload["call_id"] for d in device.collapsed_inbox()] == ["c-2", "c-3"]


async def test_offline_device_toggles(apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC, token=secrets.token_hex(32).upper())

    device.go_offline()
    await apns.send_notification(call_push(device.token, "c-1"))
    assert device.inbox == [] and device.pending is not None
    assert device.go_online() is not None
    assert device.go_online() is None
    assert sim.device(device.token.upper()) is device
