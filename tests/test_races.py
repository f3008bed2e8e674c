"""Races that Redis must settle to exactly one outcome."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from voip.calls import Action
from voip.stores import CallError, CallStore, Stores

TRIALS = 200
DEVICES = 5


async def _ringing_call(calls: CallStore, callee_devices: int = DEVICES) -> str:
    call_id = str(uuid.uuid4())
    created = await calls.create(
        call_id,
        caller_user="alice",
        caller_device="a1",
        callee_user="bob",
        ring_deadline=2**41,
        node="n",
        targets=[f"b{i}" for i in range(callee_devices)],
        created_at=1,
    )
    assert created
    return call_id


async def _attempt(calls: CallStore, call_id: str, action: Action, user: str, device: str) -> str | None:
    try:
        transition = await calls.transition(call_id, action, user=user, device=device, node="n")
    except CallError as exc:
        assert exc.code == "invalid_state", exc.code
        return None
    return transition.call.state.value


async def test_many_devices_answering_at_once_make_exactly_one_winner(
    redis: Redis, redis_url: str, prefix: str
) -> None:
    # Separate connections, so the answers really arrive at Redis interleaved.
    clients = [Redis.from_url(redis_url) for _ in range(DEVICES)]
    stores = [Stores.open(client, prefix, retention=600).calls for client in clients]
    try:
        for _ in range(TRIALS):
            call_id = await _ringing_call(stores[0])
            outcomes = await asyncio.gather(
                *(_attempt(stores[i], call_id, Action.ANSWER, "bob", f"b{i}") for i in range(DEVICES))
            )
            winners = [i for i, outcome in enumerate(outcomes) if outcome == "answered"]
            assert len(winners) == 1, outcomes
            call = await stores[0].get(call_id)
            assert call is not None and call.answered_by_device == f"b{winners[0]}"
            states = [e for e in await stores[0].timeline(call_id) if e["event"] == "state"]
            assert len(states) == 1
    finally:
        for client in clients:
            await client.aclose()


async def test_answer_crossing_a_cancel_ends_in_one_outcome(redis: Redis, redis_url: str, prefix: str) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    stores = [Stores.open(client, prefix, retention=600).calls for client in clients]
    try:
        for _ in range(TRIALS):
            call_id = await _ringing_call(stores[0], 1)
            answer, cancel = await asyncio.gather(
                _attempt(stores[0], call_id, Action.ANSWER, "bob", "b0"),
                _attempt(stores[1], call_id, Action.HANGUP, "alice", "a1"),
            )
            final = await stores[0].get(call_id)
            assert final is not None
            # Either the cancel came first and the answer was refused, or the answer
            # came first and the caller's hangup ended the answered call: never both
            # "answered" and "cancelled".
            assert (answer, cancel, final.state) in (
                (None, "cancelled", "cancelled"),
                ("answered", "ended", "ended"),
            ), (answer, cancel, final.state)
    finally:
        for client in clients:
            await client.aclose()


async def _timeout(calls: CallStore, call_id: str) -> str | None:
    try:
        return (await calls.transition(call_id, Action.TIMEOUT, node="n")).call.state.value
    except CallError:
        return None


async def test_timeout_crossing_an_answer_fires_at_most_once(redis: Redis, redis_url: str, prefix: str) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(3)]
    stores = [Stores.open(client, prefix, retention=600).calls for client in clients]
    try:
        for _ in range(50):
            call_id = await _ringing_call(stores[0], 1)
            results = await asyncio.gather(
                _timeout(stores[0], call_id),
                _timeout(stores[1], call_id),
                _attempt(stores[2], call_id, Action.ANSWER, "bob", "b0"),
            )
            assert sum(r is not None for r in results) == 1, results
    finally:
        for client in clients:
            await client.aclose()
