"""`python -m bench --wait`: what `WAIT 1` costs call creation (VOIP_REDIS_WAIT_REPLICAS).

The stores's own `create_call` (one pipelined round trip: the script, two index writes)
against a Sentinel-managed master with one replica, on loopback, without and with the
WAIT that makes the replica acknowledge the call first. Sequential calls: latency, not
throughput.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

from bench.stats import percentile
from tests.sentinel import SentinelRedis
from voip.redis_conn import RedisConnections
from voip.settings import load_settings
from voip.stores import CallStore, Stores

CALLS = 2000


async def _measure(store: CallStore, calls: int) -> list[float]:
    latencies: list[float] = []
    now = int(time.time() * 1000)
    for index in range(calls):
        began = time.perf_counter()
        await store.create(
            str(uuid.uuid4()),
            caller_user="alice",
            caller_device="a1",
            callee_user=f"u{index}",
            ring_deadline=now + 45000,
            node="bench",
            targets=["d1"],
            created_at=now,
        )
        latencies.append((time.perf_counter() - began) * 1e6)
    return latencies


async def _run(redis_set: SentinelRedis, calls: int) -> list[str]:
    settings = load_settings(jwt_secret="x" * 32, **redis_set.settings())
    connections = RedisConnections.from_settings(settings)
    prefix = f"bench-{secrets.token_hex(4)}:"
    rows = []
    try:
        for replicas in (0, 1, 0, 1):  # interleaved, so drift shows as a difference between rounds
            store = Stores.open(
                connections.client,
                prefix,
                retention=600,
                ops_feed=False,
                wait_replicas=replicas,
                wait_timeout_ms=100,
            ).calls
            await _measure(store, 200)  # warm-up: scripts loaded, pool filled
            latencies = sorted(await _measure(store, calls))
            label = "WAIT 1 100" if replicas else "no WAIT   "
            rows.append(
                f"create_call {label}: p50 {percentile(latencies, 50):6.0f} µs  p99 {percentile(latencies, 99):6.0f} µs"
                f"  max {latencies[-1]:6.0f} µs  ({calls} calls)"
            )
    finally:
        await connections.aclose()
    return rows


def main(calls: int = CALLS) -> None:
    with SentinelRedis() as redis_set:
        for row in asyncio.run(_run(redis_set, calls)):
            print(row, flush=True)
