"""The webhook outbox's delivery on its own, on a real Redis (and a Redis Cluster) to a
real HTTP receiver: a node that dies holding a call, and an event given up after a day."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.http_receiver import Answer, HttpReceiver, Received
from voip.calls import Action
from voip.clock import SYSTEM_CLOCK, ManualClock, now_ms
from voip.stores import Stores
from voip.stores.layout import BUCKETS
from voip.webhooks.delivery import WebhookDelivery
from voip.webhooks.events import GIVE_UP_MS, retry_delay_ms

pytestmark = pytest.mark.on_cluster_too

SECRET = "delivery-secret-0123456789"


async def declined_call(stores: Stores) -> str:
    """A call with two events in its outbox: call.created, call.declined."""
    call_id = str(uuid.uuid4())
    now = now_ms()
    assert await stores.calls.create(
        call_id,
        caller_user="alice",
        caller_device="a1",
        callee_user="bob",
        ring_deadline=now + 60_000,
        node="n",
        targets=["b1"],
        created_at=now,
    )
    await stores.calls.transition(call_id, Action.DECLINE, user="bob", device="b1", node="n")
    return call_id


async def test_a_node_that_dies_holding_a_call_leaves_it_to_another_once_its_lease_runs_out(
    redis: Redis, prefix: str
) -> None:
    stores = Stores.open(redis, prefix, retention=600, webhooks_ttl=600)
    call_id = await declined_call(stores)
    receiver = await HttpReceiver().start()
    try:
        # The dying node: claimed the call, took its lock, then nothing (killed mid-round).
        [(claimed, _)] = await stores.webhooks.claim_due(now_ms(), 300, list(range(BUCKETS)))
        assert claimed == call_id
        assert await stores.webhooks.take(call_id, "dead-node", 300) is not None
        survivor = WebhookDelivery(stores.webhooks, [receiver.url], SECRET, clock=SYSTEM_CLOCK, node="b", lease_ms=300)
        try:
            for _ in range(100):  # polls, as its loop would, until the lease and lock run out
                await survivor.deliver_due()
                await survivor.idle()
                if len(receiver.received) >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await survivor.stop()
        events = [r.json() for r in receiver.received]
        assert [e["type"] for e in events] == ["call.created", "call.declined"]
        assert [e["id"] for e in events] == [f"{call_id}.1", f"{call_id}.2"]
    finally:
        await receiver.stop()


async def test_an_event_failing_for_a_day_is_given_up_and_the_next_one_goes(redis: Redis, prefix: str) -> None:
    def refuse_the_first(request: Received) -> Answer:
        return (503, b"") if request.json()["type"] == "call.created" else (204, b"")

    def dropped() -> float:
        return REGISTRY.get_sample_value("voip_webhook_deliveries_total", {"outcome": "dropped"}) or 0.0

    stores = Stores.open(redis, prefix, retention=600, webhooks_ttl=600)
    await declined_call(stores)
    clock = ManualClock()  # from now: the events' times are due
    receiver = await HttpReceiver(respond=refuse_the_first).start()
    delivery = WebhookDelivery(stores.webhooks, [receiver.url], SECRET, clock=clock, node="n")
    before = dropped()
    try:

        async def attempt() -> None:
            await delivery.deliver_due()
            await delivery.idle()

        await attempt()
        assert receiver.attempts == 1 and receiver.received == []
        await attempt()  # not due yet: backing off
        assert receiver.attempts == 1
        clock.advance(retry_delay_ms(1) + 1000)
        await attempt()
        assert receiver.attempts == 2 and receiver.received == []  # still in order: declined waits
        clock.advance(GIVE_UP_MS)
        clock.advance(3600 * 1000)  # past the longest pause too
        await attempt()
        assert [r.json()["type"] for r in receiver.received] == ["call.declined"]
        assert dropped() == before + 1
        # Final and every event dealt with: the call leaves the due index.
        assert await stores.webhooks.backlog(clock.now_ms()) == (0, 0)
    finally:
        await delivery.stop()
        await receiver.stop()


def test_retries_double_up_to_an_hour() -> None:
    delays = [retry_delay_ms(n) for n in range(1, 16)]
    assert all(750 * 2 ** (n - 1) <= d <= 1000 * 2 ** (n - 1) for n, d in enumerate(delays[:10], 1))
    assert all(0.75 * 3600_000 <= d <= 3600_000 for d in delays[12:])
