"""Issue 9, item 4: a push APNs answered is recorded, whatever Redis does meanwhile, and
a node that stops waits for the pushes it has in flight.

Redis here is a redis-server of the test's own, on a port from tests/ports.py, with an
append-only file synced on every write: it is killed while APNs holds a push, and
restarted with its data once APNs has answered."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import structlog

from apnsim import APNsSimulator, Fault
from tests.conftest import BUNDLE, RunningNode, make_settings, register, start_node
from tests.redis_process import RedisProcess
from voip.stores import Stores
from voip.tasks import BackgroundTasks

pytestmark = pytest.mark.interop

VOIP_TOPIC = f"{BUNDLE}.voip"


@pytest.fixture
def own_redis(redis_process: Callable[..., RedisProcess]) -> RedisProcess:
    """Every write fsynced: what Redis acknowledged survives its kill -9."""
    return redis_process("--save", "", "--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
async def node_on_own_redis(
    own_redis: RedisProcess, prefix: str, apns: tuple[APNsSimulator, dict[str, str]]
) -> AsyncIterator[tuple[RunningNode, APNsSimulator]]:
    sim, apns_settings = apns
    running = await start_node(make_settings(own_redis.url, prefix, **apns_settings))
    yield running, sim
    if not running.task.done():
        await running.stop()


async def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = await check()
        except redis.exceptions.RedisError:
            found = None
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def _pushes(kind: str, device: str) -> Any:
    def matching(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in timeline if e["event"] == "push" and e["kind"] == kind and e["device"] == device]

    return matching


@pytest.mark.parametrize("kind", ["invite", "cancel"])
async def test_a_push_answered_while_redis_is_down_is_recorded_once_redis_is_back(
    node_on_own_redis: tuple[RunningNode, APNsSimulator], own_redis: RedisProcess, prefix: str, kind: str
) -> None:
    node, sim = node_on_own_redis
    phone = sim.add_device(VOIP_TOPIC, online=False)
    await register(node, "bob", "b-phone", voip_token=phone.token)
    caller = await node.device("alice", "a1")
    client = redis.asyncio.Redis.from_url(own_redis.url)
    stores = Stores.open(client, prefix, retention=86400)
    try:
        if kind == "invite":
            sim.inject(Fault.slow(2.0), token=phone.token)
        started = await caller.request({"type": "call.start", "callee": "bob"})
        call_id = started["call_id"]
        if kind == "cancel":
            await _until(lambda: _timeline_pushes(stores, call_id, "invite"), 10, "invite on the timeline")
            sim.inject(Fault.slow(2.0), token=phone.token)
            ack = await caller.request({"type": "call.hangup", "call_id": call_id})
            assert ack["state"] == "cancelled"
        push_type = "call.incoming" if kind == "invite" else "call.cancelled"
        held = await sim.wait_for(
            lambda r: r.token == phone.token and (r.payload or {}).get("type") == push_type, timeout=10
        )
        assert not held.answered
        own_redis.kill()  # while APNs holds the push
        await held.wait_answered(timeout=10)
        assert held.status == 200
        # The node's bookkeeping now fails against a dead Redis, and keeps trying.
        await asyncio.sleep(1.0)
        own_redis.start()

        entries = await _until(lambda: _timeline_pushes(stores, call_id, kind), 30, f"{kind} push on the timeline")
        assert len(entries) == 1
        [entry] = entries
        assert entry["outcome"] == "accepted" and entry["apns_id"] == held.apns_id
        last = await client.hget(stores.keys.last_push("bob"), "b-phone")
        assert last is not None and b'"kind":"%s"' % kind.encode() in last
        if kind == "cancel":  # recorded in the same round trip as the timeline entry
            recorded = await _until(
                lambda: client.hget(stores.keys.cancellations(call_id), "b-phone"), 10, "cancellation record"
            )
            assert int(recorded) == entry["at"]
    finally:
        await client.aclose()


async def _timeline_pushes(stores: Stores, call_id: str, kind: str) -> list[dict[str, Any]]:
    return _pushes(kind, "b-phone")(await stores.calls.timeline(call_id))


async def test_node_stop_waits_for_pushes_in_flight_and_records_them(
    node_on_own_redis: tuple[RunningNode, APNsSimulator], own_redis: RedisProcess, prefix: str
) -> None:
    node, sim = node_on_own_redis
    phones = [sim.add_device(VOIP_TOPIC, online=False) for _ in range(3)]
    for n, phone in enumerate(phones):
        await register(node, "bob", f"b-{n}", voip_token=phone.token)
        sim.inject(Fault.slow(1.5), token=phone.token)
    caller = await node.device("alice", "a1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    for phone in phones:
        held = await sim.wait_for(lambda r, t=phone.token: r.token == t, timeout=10)
        assert not held.answered
    assert node.node.pushes.in_flight == 3

    stopping = time.monotonic()
    await node.stop()
    took = time.monotonic() - stopping

    assert all(r.status == 200 for r in sim.requests if r.token in {p.token for p in phones})
    client = redis.asyncio.Redis.from_url(own_redis.url)
    stores = Stores.open(client, prefix, retention=86400)
    try:
        timeline = await stores.calls.timeline(call_id)
    finally:
        await client.aclose()
    recorded = sorted(e["device"] for e in timeline if e["event"] == "push" and e["kind"] == "invite")
    assert recorded == ["b-0", "b-1", "b-2"], (took, timeline)


async def test_node_stop_waits_for_pushes_no_longer_than_the_drain_seconds(
    own_redis: RedisProcess, prefix: str, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    sim, apns_settings = apns
    node = await start_node(make_settings(own_redis.url, prefix, drain_seconds=0.5, **apns_settings))
    phone = sim.add_device(VOIP_TOPIC, online=False)
    await register(node, "bob", "b-0", voip_token=phone.token)
    sim.inject(Fault.slow(2.5), token=phone.token)  # under the notifier's 3 s response timeout
    caller = await node.device("alice", "a1")
    await caller.request({"type": "call.start", "callee": "bob"})
    await sim.wait_for(lambda r: r.token == phone.token, timeout=10)
    assert node.node.pushes.in_flight == 1

    stopping = time.monotonic()
    await node.stop()
    # The bound, not APNs: 0.5 s for the push, then the rest of the shutdown.
    assert time.monotonic() - stopping < 2.0


async def test_a_failed_background_task_is_logged_by_name_and_never_left_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))

    async def fails() -> None:
        raise RuntimeError("bookkeeping broke")

    tasks = BackgroundTasks("push")
    try:
        with structlog.testing.capture_logs() as logged:
            tasks.spawn(fails(), "invite:call-1:b-phone")
            assert await tasks.wait(5) == 0
        failures = [e for e in logged if e["event"] == "task.failed"]
        assert [e["task"] for e in failures] == ["push:invite:call-1:b-phone"]
        assert isinstance(failures[0]["exc_info"], RuntimeError)
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
    finally:
        loop.set_exception_handler(previous)
