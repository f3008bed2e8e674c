"""Retry policy: same apns-id, jittered backoff, never past the deadline, one delivery."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import pytest

from apnsim import APNsSimulator, Fault
from tests.push.conftest import VOIP_TOPIC, MakeNotifier, invite, requests_for
from voip.push import APNsNotifier, Outcome


async def _quiet_after(sim: APNsSimulator, apns_id: str, seconds: float = 0.3) -> None:
    count = len(requests_for(sim, apns_id))
    await asyncio.sleep(seconds)
    assert len(requests_for(sim, apns_id)) == count, "a request went out after the result"


async def test_retries_stop_at_the_deadline(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    notifier = make_notifier(max_attempts=100)
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.service_unavailable(), token=device.token, times=None)
    request = invite(device, ttl=0.4)

    result = await notifier.send(request)
    returned_at = time.time()

    assert result.outcome == Outcome.EXPIRED
    assert (result.status, result.reason) == (503, "ServiceUnavailable")
    assert returned_at < request.deadline + 0.25
    # The last attempt may be written just before the deadline and still be on its way
    # when the result is in: count once the simulator has heard everything.
    for _ in range(100):
        if len(requests_for(sim, request.apns_id)) >= result.attempts:
            break
        await asyncio.sleep(0.01)
    await _quiet_after(sim, request.apns_id)
    records = requests_for(sim, request.apns_id)
    assert result.attempts == len(records) >= 2
    assert all(r.received_at < request.deadline for r in records[:-1])
    assert device.inbox == []


async def test_an_attempt_cut_off_by_the_deadline_keeps_the_last_answer(
    make_notifier: MakeNotifier, sim: APNsSimulator
) -> None:
    """The deadline coming while an attempt is in flight says nothing about APNs: the push
    is reported with the last answer APNs gave (it was 'NoResponse' whenever a retry was
    still out when the deadline came, as on a loaded machine)."""
    notifier = make_notifier(max_attempts=100, response_timeout=5.0, backoff_base=0.001, backoff_max=0.001)
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.service_unavailable(), token=device.token, times=1)
    request = invite(device, ttl=0.5)
    sim.inject(Fault.slow(5.0), token=None, times=None)  # the retry: answered after the deadline

    result = await notifier.send(request)

    assert result.outcome == Outcome.EXPIRED
    assert (result.status, result.reason) == (503, "ServiceUnavailable")
    assert result.attempts == len(requests_for(sim, request.apns_id)) == 2
    assert request.deadline <= time.time() < request.deadline + 0.25


async def test_unanswered_push_expires_at_its_deadline(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    notifier = make_notifier(response_timeout=5.0)
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.silent(), token=device.token, times=None)
    request = invite(device, ttl=0.3)

    result = await notifier.send(request)

    assert (result.outcome, result.status, result.attempts) == (Outcome.EXPIRED, None, 1)
    assert request.deadline <= time.time() < request.deadline + 0.25
    await _quiet_after(sim, request.apns_id)


async def test_backoff_is_jittered_and_keeps_the_apns_id(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    notifier = make_notifier(backoff_base=0.02, backoff_max=0.08, max_attempts=6)
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.internal_server_error(), token=device.token, times=5)
    request = invite(device, ttl=5)

    result = await notifier.send(request)

    assert (result.outcome, result.attempts) == (Outcome.ACCEPTED, 6)
    records = requests_for(sim, request.apns_id)
    assert len(records) == 6 and {r.header("apns-id") for r in records} == {request.apns_id}
    gaps = [b.received_at - a.received_at for a, b in pairwise(records)]
    assert len({round(g, 4) for g in gaps}) > 1
    assert all(g < 0.08 + 0.1 for g in gaps)
    assert len(device.inbox) == 1


async def test_attempts_are_capped(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    notifier = make_notifier(max_attempts=3)
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.internal_server_error(), token=device.token, times=None)
    request = invite(device, ttl=5)

    result = await notifier.send(request)

    assert (result.outcome, result.attempts, result.status) == (Outcome.FAILED, 3, 500)
    assert len(requests_for(sim, request.apns_id)) == 3


async def test_connection_reset_mid_flight(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    await notifier.connect("sandbox")
    sim.inject(Fault.connection_reset(), token=device.token)
    request = invite(device)

    result = await notifier.send(request)

    assert (result.outcome, result.attempts) == (Outcome.ACCEPTED, 2)
    first, second = requests_for(sim, request.apns_id)
    assert first.status is None and second.status == 200
    assert first.connection_id != second.connection_id
    assert len(device.inbox) == 1


@pytest.mark.parametrize("answer_first", [False, True])
async def test_goaway(notifier: APNsNotifier, sim: APNsSimulator, answer_first: bool) -> None:
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.goaway("Shutdown", answer_first=answer_first), token=device.token)
    request, following = invite(device), invite(device)

    result = await notifier.send(request)
    after = await notifier.send(following)

    assert result.outcome == after.outcome == Outcome.ACCEPTED
    # Unanswered and above GOAWAY's last-stream-id: not processed, so it goes again.
    assert result.attempts == (1 if answer_first else 2)
    assert [r.status for r in requests_for(sim, request.apns_id)] == ([200] if answer_first else [None, 200])
    [next_record] = requests_for(sim, following.apns_id)
    assert next_record.connection_id != sim.requests[0].connection_id
    assert [d.push.apns_id for d in device.inbox] == [request.apns_id, following.apns_id]


async def test_silent_stream_is_abandoned_with_its_connection(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    notifier = make_notifier(response_timeout=0.2)
    device = sim.add_device(VOIP_TOPIC)
    sim.inject(Fault.silent(), token=device.token)
    request = invite(device)

    result = await notifier.send(request)

    assert (result.outcome, result.attempts) == (Outcome.ACCEPTED, 2)
    first, second = requests_for(sim, request.apns_id)
    assert first.connection_id != second.connection_id
    assert not sim.connections[first.connection_id - 1].open
    assert len(device.inbox) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.connection_reset(),
        Fault.goaway(answer_first=False),
        Fault.goaway(answer_first=True),
        Fault.silent(),
        Fault.slow(0.5),
    ],
    ids=["reset", "goaway-unanswered", "goaway-answered", "silent", "slow"],
)
async def test_one_delivery_when_the_connection_dies_mid_flight(
    make_notifier: MakeNotifier, sim: APNsSimulator, fault: Fault
) -> None:
    notifier = make_notifier(response_timeout=0.2)
    device = sim.add_device(VOIP_TOPIC)
    await notifier.send(invite(sim.add_device(VOIP_TOPIC)))  # a warm, authenticated connection
    sim.inject(fault, token=device.token)
    request = invite(device, ttl=3)

    result = await notifier.send(request)

    assert result.outcome == Outcome.ACCEPTED
    await asyncio.sleep(0.6)  # an abandoned attempt would have landed by now
    assert [d.push.apns_id for d in device.inbox] == [request.apns_id]
    assert result.attempts == len(requests_for(sim, request.apns_id))


async def test_concurrent_pushes_on_a_connection_that_goes_silent(
    make_notifier: MakeNotifier, sim: APNsSimulator
) -> None:
    notifier = make_notifier(response_timeout=0.3)
    devices = [sim.add_device(VOIP_TOPIC) for _ in range(30)]
    await notifier.send(invite(sim.add_device(VOIP_TOPIC)))
    sim.inject(Fault.silent(), token=devices[7].token)
    requests = [invite(d, ttl=3) for d in devices]

    results = await asyncio.gather(*(notifier.send(r) for r in requests))

    assert all(r.outcome == Outcome.ACCEPTED for r in results)
    await asyncio.sleep(0.3)
    for device, request in zip(devices, requests, strict=True):
        assert [d.push.apns_id for d in device.inbox] == [request.apns_id]


async def test_concurrent_pushes_on_a_connection_that_goes_away(
    make_notifier: MakeNotifier, sim: APNsSimulator
) -> None:
    """Streams above GOAWAY's last-stream-id are not processed (the simulator used to
    deliver those it had read, and the client's retry then delivered them twice)."""
    notifier = make_notifier(response_timeout=1.0)
    devices = [sim.add_device(VOIP_TOPIC) for _ in range(30)]
    await notifier.send(invite(sim.add_device(VOIP_TOPIC)))
    sim.inject(Fault.goaway("Shutdown", answer_first=True), token=devices[7].token)
    requests = [invite(d, ttl=3) for d in devices]

    results = await asyncio.gather(*(notifier.send(r) for r in requests))

    assert all(r.outcome == Outcome.ACCEPTED for r in results)
    await asyncio.sleep(0.3)
    for device, request in zip(devices, requests, strict=True):
        assert [d.push.apns_id for d in device.inbox] == [request.apns_id]


async def test_concurrent_pushes_on_a_connection_that_is_reset(make_notifier: MakeNotifier, sim: APNsSimulator) -> None:
    """A reset leaves every stream in flight unanswered, and APNs may have acted on any
    of them (apnsim delivers those it had read). HTTP/2 cannot tell which: the
    notifier sends each again once, so none is lost; a second delivery happens only
    where APNs accepted a push whose answer the reset swallowed (see docs/push.md)."""
    notifier = make_notifier(response_timeout=0.3)
    devices = [sim.add_device(VOIP_TOPIC) for _ in range(30)]
    await notifier.send(invite(sim.add_device(VOIP_TOPIC)))
    sim.inject(Fault.connection_reset(), token=devices[7].token)
    requests = [invite(d, ttl=3) for d in devices]

    results = await asyncio.gather(*(notifier.send(r) for r in requests))

    assert all(r.outcome == Outcome.ACCEPTED for r in results)
    assert len(sim.connections) == 2
    for device, request, result in zip(devices, requests, results, strict=True):
        records = requests_for(sim, request.apns_id)
        # An attempt written just before the reset may die in the socket unread, so
        # APNs can have seen fewer requests than we wrote, never more.
        assert len(records) <= result.attempts <= 2
        assert {d.push.apns_id for d in device.inbox} == {request.apns_id}
        # Every request the simulator read and did not refuse reached the phone. Whether
        # the notifier sent it again depends on whether the answer reached the notifier,
        # not on whether the simulator wrote it: the reset's RST discards answers still
        # unread in the client's socket buffer, so an answered push can be sent twice.
        assert len(device.inbox) == sum(1 for r in records if r.fault is None)
