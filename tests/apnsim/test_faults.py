"""Injected faults, seen through aioapns (how the service will meet them) and raw h2."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pytest
from aioapns import APNs, NotificationRequest, PushType

from apnsim import APNsSimulator, Fault, ManualClock, SigningKey
from tests.apnsim.conftest import VOIP_PAYLOAD, VOIP_TOPIC, push_headers
from tests.apnsim.h2client import RawH2Client


async def _until(condition, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def voip_push(token: str) -> NotificationRequest:
    return NotificationRequest(token, {"aps": {}, "call_id": "c-7"}, push_type=PushType.VOIP)


@pytest.mark.parametrize(
    "fault, status, reason",
    [
        (Fault.bad_device_token(), "400", "BadDeviceToken"),
        (Fault.too_many_requests(), "429", "TooManyRequests"),
        (Fault.internal_server_error(), "500", "InternalServerError"),
        (Fault.service_unavailable(), "503", "ServiceUnavailable"),
        (Fault.shutdown(), "503", "Shutdown"),
    ],
)
async def test_rejection_faults(fault: Fault, status: str, reason: str, apns: APNs, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(fault, token=device.token)

    faulted = await apns.send_notification(voip_push(device.token))
    after = await apns.send_notification(voip_push(device.token))

    assert (faulted.status, faulted.description) == (status, reason)
    assert after.is_successful
    assert len(device.inbox) == 1


async def test_410_fault_carries_the_chosen_timestamp(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.unregistered(timestamp_ms=1_600_000_000_000), token=token)

    result = await apns.send_notification(voip_push(token))

    assert (result.status, result.description, result.timestamp) == ("410", "Unregistered", 1_600_000_000_000)


async def test_410_fault_defaults_to_now(apns: APNs, sim: APNsSimulator, clock: ManualClock) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.expired_token(), token=token)

    result = await apns.send_notification(voip_push(token))

    assert (result.status, result.description) == ("410", "ExpiredToken")
    assert result.timestamp == int(clock() * 1000)


async def test_token_fault_leaves_other_tokens_alone(apns: APNs, sim: APNsSimulator) -> None:
    victim, bystander = secrets.token_hex(32), secrets.token_hex(32)
    sim.inject(Fault.internal_server_error(), token=victim, times=None)

    results = [await apns.send_notification(voip_push(t)) for t in (bystander, victim, victim)]

    assert [r.status for r in results] == ["200", "500", "500"]


async def test_one_shot_for_n_requests_then_sticky_until_cleared(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.too_many_requests(), times=2)

    counted = [(await apns.send_notification(voip_push(token))).status for _ in range(3)]
    sticky = sim.inject(Fault.service_unavailable(), times=None)
    during = [(await apns.send_notification(voip_push(token))).status for _ in range(3)]
    sim.remove_fault(sticky)
    cleared = (await apns.send_notification(voip_push(token))).status

    assert counted == ["429", "429", "200"]
    assert during == ["503", "503", "503"]
    assert sticky.fired == 3
    assert cleared == "200"


async def test_goaway_after_answering(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.goaway("Shutdown"))

    answered = await apns.send_notification(voip_push(token))
    # aioapns keeps a GOAWAY'd connection in its pool until the socket is really
    # closed; a send in that window fails inside h2 (ProtocolError), as against Apple.
    await _until(lambda: not apns.pool.connections)
    next_one = await apns.send_notification(voip_push(token))

    assert answered.is_successful and next_one.is_successful
    assert sim.connections[0].goaway_sent == b'{"reason":"Shutdown"}'
    assert len(sim.connections) == 2
    assert len(sim.device(token).inbox) == 2


async def test_goaway_instead_of_answering_makes_aioapns_retry(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.goaway("Shutdown", answer_first=False))

    result = await apns.send_notification(voip_push(token))

    assert result.is_successful
    assert [r.status for r in sim.requests] == [None, 200]
    assert [r.connection_id for r in sim.requests] == [1, 2]
    assert len(sim.device(token).inbox) == 1


async def test_goaway_frame_as_a_raw_client_sees_it(
    raw: RawH2Client, signing_key: SigningKey, sim: APNsSimulator
) -> None:
    sim.inject(Fault.goaway("IdleTimeout", answer_first=False))
    stream_id = await raw.send(push_headers(secrets.token_hex(32), signing_key), VOIP_PAYLOAD)

    await asyncio.wait_for(raw.closed.wait(), 5)

    assert raw.goaway is not None
    assert json.loads(raw.goaway.additional_data or b"") == {"reason": "IdleTimeout"}
    assert raw.goaway.last_stream_id == max(stream_id - 2, 0)
    assert raw.goaway.error_code == 0


async def test_silent_stream_is_never_answered(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.silent())

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(apns.send_notification(voip_push(token)), 0.3)

    [record] = sim.requests
    assert record.fault == Fault.silent()
    assert not record.answered
    assert token not in sim.devices


async def test_slow_answer(apns: APNs, sim: APNsSimulator) -> None:
    sim.inject(Fault.slow(0.4))
    started = time.monotonic()

    result = await apns.send_notification(voip_push(secrets.token_hex(32)))

    assert result.is_successful
    assert time.monotonic() - started >= 0.4


async def test_connection_reset_makes_aioapns_retry(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.connection_reset(), token=token)

    result = await apns.send_notification(voip_push(token))

    assert result.is_successful
    assert sim.connections[0].reset and not sim.connections[0].open
    assert [r.status for r in sim.requests] == [None, 200]


async def test_connection_reset_as_a_raw_client_sees_it(
    raw: RawH2Client, sim: APNsSimulator, signing_key: SigningKey
) -> None:
    sim.inject(Fault.connection_reset())

    with pytest.raises(ConnectionError):
        await raw.request(push_headers(secrets.token_hex(32), signing_key), VOIP_PAYLOAD)

    assert raw.goaway is None


async def test_wait_for_sees_a_fault_answer(apns: APNs, sim: APNsSimulator) -> None:
    token = secrets.token_hex(32)
    sim.inject(Fault.too_many_requests(), token=token)
    waiter = asyncio.create_task(sim.next_request(lambda r: r.status == 429, timeout=2))

    await apns.send_notification(voip_push(token))
    record = await waiter

    assert (record.token, record.reason) == (token, "TooManyRequests")
