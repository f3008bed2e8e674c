"""`python -m bench --ops [--quick]`: the operators' live feed (`WS /v1/ops/live`) under a
call-rate run, and what the feed costs call set-up.

Two nodes on one Redis (same prefix), both pinned to the server CPU and used one at a time:
"on" publishes every timeline entry to the ops channel (the default), "off" runs with
`ops_feed` off (BENCH_OPS_FEED=0 -> VOIP_OPS_FEED), so it writes the timeline but publishes
nothing. Per rate, three runs of setup_latency's call driver (same-node calls), in turn:

  off            feed off
  on, 0 ops      feed on, nobody watching (the PUBLISH to a channel without subscribers)
  on, 20 ops     feed on, 20 operator sockets on the node: subscribe + fan-out + send

(1) every operator must see every entry: `created` entries counted per client against
the calls made, and all entries of those calls against the sum of their timelines in
Redis (read once the feed is quiet); the feed's delay is receipt (wall clock) minus the
entry's `at` (ms, set by the node). (2) call.start -> call.incoming p50/p99 of each run,
and the ratio against "off" at the same rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from bench import setup_latency
from bench.noise import Noise
from bench.procs import Cluster, NodeProcess, cpu_plan
from bench.stats import percentile, ratio
from voip.auth import Authenticator

OPERATORS = 20
FULL_RATES = ((50, 500), (100, 1000))
QUICK_RATES = ((50, 100), (100, 200))
QUIET = 0.5  # the feed counts as drained after this long without an entry
DRAIN_LIMIT = 10.0


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


@dataclass
class Operator:
    socket: ClientConnection
    entries: list[tuple[str, str]] = field(default_factory=list)  # (call_id, event)
    delays_ms: list[float] = field(default_factory=list)
    last_at: float = 0.0
    close_code: int | None = None


async def _watch(op: Operator) -> None:
    try:
        async for message in op.socket:
            now = time.time() * 1000
            frame: dict[str, Any] = orjson.loads(message)
            if frame.get("type") != "entry":
                continue
            entry = frame["entry"]
            op.entries.append((frame["call_id"], entry.get("event", "")))
            op.delays_ms.append(now - entry["at"])
            op.last_at = time.monotonic()
    except Exception:
        pass
    op.close_code = op.socket.close_code


async def _operator(node: NodeProcess, auth: Authenticator, i: int) -> Operator:
    socket = await websockets.connect(
        f"ws://127.0.0.1:{node.port}/v1/ops/live",
        additional_headers={"Authorization": f"Bearer {auth.mint(f'ops-bench-{i}', 'operator')}"},
        max_queue=None,
    )
    hello = orjson.loads(await socket.recv())
    if hello["type"] != "hello":
        raise RuntimeError(f"expected hello, got {hello}")
    return Operator(socket)


@dataclass(frozen=True)
class FeedResult:
    rate: float
    calls: int
    created_min: int
    created_max: int
    entries_min: int
    entries_max: int
    entries_expected: int
    dropped: int  # operators the node closed (1013: too slow)
    delays_ms: list[float]
    created_delays_ms: list[float]


async def _timeline_total(cluster: Cluster, call_ids: set[str]) -> int:
    client = Redis.from_url(cluster.redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.llen(f"{cluster.prefix}{{c:{call_id}}}:timeline")
            return sum(await pipe.execute())
    finally:
        await client.aclose()


async def _watched_run(
    cluster: Cluster, node: NodeProcess, rate: float, count: int
) -> tuple[setup_latency.Latencies, FeedResult]:
    auth = cluster.auth
    ops = [await _operator(node, auth, i) for i in range(OPERATORS)]
    watchers = [asyncio.create_task(_watch(op)) for op in ops]
    try:
        incoming, _ = await setup_latency.call_setup(
            "on, 20 ops", node.ws_url, node.ws_url, auth, rate=rate, count=count
        )
        # The callers' sockets closed inside call_setup: their end entries follow; wait
        # until every operator has been quiet for QUIET seconds.
        deadline = time.monotonic() + DRAIN_LIMIT
        while time.monotonic() < deadline:
            now = time.monotonic()
            if all(op.close_code is not None or now - op.last_at > QUIET for op in ops):
                break
            await asyncio.sleep(0.05)
    finally:
        for op in ops:
            await op.socket.close()
        await asyncio.gather(*watchers, return_exceptions=True)
    # The run's calls: those any operator saw created (the feed is private to this cluster).
    call_ids = {cid for op in ops for cid, event in op.entries if event == "created"}
    expected = await _timeline_total(cluster, call_ids)
    created = [sum(1 for cid, event in op.entries if event == "created") for op in ops]
    mine = [sum(1 for cid, _ in op.entries if cid in call_ids) for op in ops]
    delays = [d for op in ops for d in op.delays_ms]
    created_delays = [d for op in ops for (_, e), d in zip(op.entries, op.delays_ms, strict=True) if e == "created"]
    result = FeedResult(
        rate,
        count,
        min(created),
        max(created),
        min(mine),
        max(mine),
        expected,
        sum(1 for op in ops if op.close_code == 1013),
        delays,
        created_delays,
    )
    return incoming, result


async def _measure(
    cluster: Cluster, on: NodeProcess, off: NodeProcess, rates: tuple[tuple[int, int], ...]
) -> tuple[list[setup_latency.Latencies], list[FeedResult]]:
    rows: list[setup_latency.Latencies] = []
    feeds: list[FeedResult] = []
    auth = cluster.auth
    # One short warm-up call burst per node, so no run pays for first-use costs.
    for node in (off, on):
        await setup_latency.call_setup("warm-up", node.ws_url, node.ws_url, auth, rate=50, count=20)
    for rate, count in rates:
        off_row, _ = await setup_latency.call_setup("off", off.ws_url, off.ws_url, auth, rate=rate, count=count)
        on_row, _ = await setup_latency.call_setup("on, 0 ops", on.ws_url, on.ws_url, auth, rate=rate, count=count)
        watched_row, feed = await _watched_run(cluster, on, rate, count)
        rows += [off_row, on_row, watched_row]
        feeds.append(feed)
    return rows, feeds


def _p(samples: list[float], q: float) -> float:
    return percentile(samples, q) if samples else float("nan")


def report(rows: list[setup_latency.Latencies], feeds: list[FeedResult]) -> list[str]:
    lines = [
        f"## ops live feed: {OPERATORS} operators on /v1/ops/live during a call-rate run",
        f"{'rate/s':>7}{'calls':>7}{'created/client':>16}{'entries/client':>16}{'expected':>10}"
        f"{'dropped':>9}{'delay p50':>11}{'p99':>7}{'max':>7}{'created p99':>13}",
    ]
    for feed in feeds:
        created = (
            f"{feed.created_min}-{feed.created_max}" if feed.created_min != feed.created_max else str(feed.created_min)
        )
        entries = (
            f"{feed.entries_min}-{feed.entries_max}" if feed.entries_min != feed.entries_max else str(feed.entries_min)
        )
        lines.append(
            f"{feed.rate:>7.0f}{feed.calls:>7}{created:>16}{entries:>16}{feed.entries_expected:>10}"
            f"{feed.dropped:>9}{_p(feed.delays_ms, 50):>11.0f}{_p(feed.delays_ms, 99):>7.0f}"
            f"{max(feed.delays_ms, default=float('nan')):>7.0f}{_p(feed.created_delays_ms, 99):>13.0f}"
        )
    lines += [
        "(delay: receipt wall clock - entry `at`, ms resolution, all entries of all clients;",
        " expected: sum of the run's timelines in Redis, every client should get all of them)",
        "",
        "## call.start -> call.incoming with the ops feed on vs off (same-node, open loop, ms)",
        f"{'run':<14}{'rate/s':>7}{'n':>6}{'lost':>5}{'p50':>8}{'p99':>8}{'p50 x':>7}{'p99 x':>7}",
    ]
    base: dict[float, setup_latency.Latencies] = {}
    for row in rows:
        name = row.name.removesuffix(" incoming")
        if name == "off":
            base[row.rate] = row
        floor = base[row.rate]
        lines.append(
            f"{name:<14}{row.rate:>7.0f}{row.sent:>6}{row.lost:>5}{row.p(50):>8.2f}{row.p(99):>8.2f}"
            f"{ratio(row.p(50), floor.p(50)):>7.2f}{ratio(row.p(99), floor.p(99)):>7.2f}"
        )
    return lines


def main(*, quick: bool) -> None:
    from bench.__main__ import _run, machine

    rates = QUICK_RATES if quick else FULL_RATES
    server_cpu, load_cpu = cpu_plan()
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})
    began, noise = time.monotonic(), Noise()
    print(f"# voip ops bench: {machine()}; nodes on CPU {server_cpu}, load, operators and Redis on CPU {load_cpu}")
    with Cluster(server_cpu) as cluster:
        with _env("BENCH_OPS_FEED", "1"):
            on = cluster.start_node("on")
        with _env("BENCH_OPS_FEED", "0"):
            off = cluster.start_node("off")
        rows, feeds = _run(_measure(cluster, on, off, rates))
        print("\n".join(report(rows, feeds)))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
