"""A ring-timeout tick's claims: one script per bucket, all in one pipeline, so one round
trip on one Redis (on a cluster a pipeline per shard: tests/cluster/test_calls_on_cluster.py);
and however nodes' ticks interleave, each due timeout is leased to one node."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from voip.clock import now_ms
from voip.stores import Stores
from voip.stores.calls import BUCKETS_PER_TICK
from voip.stores.layout import BUCKETS, KeyLayout, bucket_of


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every request this process writes to Redis from now on, as written: one command, or
    a whole pipeline (redis-py packs it into one write), each a round trip."""
    written: list[bytes] = []
    send = AbstractConnection.send_packed_command

    async def recorded(
        self: AbstractConnection, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if isinstance(command, str):
            written.append(command.encode())
        else:
            written.append(command if isinstance(command, bytes) else b"".join(command))
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", recorded)
    return written


def one_call_per_bucket() -> dict[int, str]:
    calls: dict[int, str] = {}
    n = 0
    while len(calls) < BUCKETS:
        calls.setdefault(bucket_of(f"call-{n}"), f"call-{n}")
        n += 1
    return calls


async def test_a_tick_claims_its_buckets_in_one_round_trip(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, now = KeyLayout(prefix), now_ms()
    due = one_call_per_bucket()
    for bucket, call_id in due.items():
        await redis.zadd(keys.ring_bucket(bucket), {call_id: now - 1})
    node_a, node_b = Stores.open(redis, prefix, retention=60), Stores.open(redis, prefix, retention=60)
    claim = node_a.calls._claim
    await redis.script_load(claim.script)  # as after a node's first tick (NOSCRIPT: test_script_pipelines.py)
    claim_sha = claim.sha.encode()

    written = record_writes(monkeypatch)
    by_a = await node_a.calls.claim_due_timeouts(now, 5000, node="a")  # the next buckets of a's round
    assert len(written) == 1, written
    assert written[0].count(claim_sha) == BUCKETS_PER_TICK
    assert len(by_a) == BUCKETS_PER_TICK

    # Another node's tick over every bucket: a's buckets are leased to a, and so are the
    # timeouts a took; b gets the rest, and a, ticking again, nothing it already has.
    by_b = await node_b.calls.claim_due_timeouts(now, 5000, node="b", buckets=list(range(BUCKETS)))
    again = await node_a.calls.claim_due_timeouts(now, 5000, node="a", buckets=list(range(BUCKETS)))
    assert len(written) == 3
    assert sorted(by_a + by_b + again) == sorted(due.values())
    assert not set(by_a) & set(by_b)
