"""Part 2: call.start on the caller's socket to call.incoming on the callee's, at a steady
rate, against the floor: a Redis PUBLISH to a subscriber in the same client process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from bench import devices
from bench.stats import percentile, ratio
from voip.auth import Authenticator

# Callers share the load so that none of them meets the per-socket frame limit (ws_rate).
PAIRS = 10
DRAIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class Latencies:
    name: str
    rate: float
    sent: int
    samples_ms: list[float]

    @property
    def lost(self) -> int:
        return self.sent - len(self.samples_ms)

    def p(self, q: float) -> float:
        return percentile(self.samples_ms, q) if self.samples_ms else float("nan")


async def _paced(rate: float, count: int, send: Callable[[int], Awaitable[None]]) -> None:
    """Open loop: send i goes at start + i/rate, however long earlier replies take."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)


async def _wait_for(done: Callable[[], bool]) -> None:
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while not done():
        if time.perf_counter() >= deadline:
            return  # the caller reports what never arrived
        await asyncio.sleep(0.01)


async def _read(socket: ClientConnection, on_frame: Callable[[dict[str, Any], float], None]) -> None:
    with contextlib.suppress(Exception):
        async for message in socket:
            on_frame(orjson.loads(message), time.perf_counter())


async def call_setup(
    name: str, caller_ws: str, callee_ws: str, auth: Authenticator, *, rate: float, count: int
) -> tuple[Latencies, Latencies]:
    """(call.start -> call.incoming at the callee, call.start -> call.started at the caller)."""
    tag = secrets.token_hex(3)
    callers = [await devices.connect(caller_ws, auth, f"c{tag}-{p}", "phone") for p in range(PAIRS)]
    callees = [await devices.connect(callee_ws, auth, f"e{tag}-{p}", "phone") for p in range(PAIRS)]
    sent_at: dict[str, float] = {}
    incoming: list[float] = []
    started: list[float] = []
    errors: list[dict[str, Any]] = []

    def on_callee(frame: dict[str, Any], at: float) -> None:
        if frame["type"] == "call.incoming":
            incoming.append((at - sent_at[frame["call_id"]]) * 1000)

    def on_caller(frame: dict[str, Any], at: float) -> None:
        if frame["type"] == "call.started":
            started.append((at - sent_at[frame["call_id"]]) * 1000)
        elif frame["type"] == "error":
            errors.append(frame)

    readers = [asyncio.create_task(_read(s, on_callee)) for s in callees]
    readers += [asyncio.create_task(_read(s, on_caller)) for s in callers]

    async def send(i: int) -> None:
        call_id = str(uuid.uuid4())
        frame = orjson.dumps({"type": "call.start", "id": i, "callee": f"e{tag}-{i % PAIRS}", "call_id": call_id})
        sent_at[call_id] = time.perf_counter()
        await callers[i % PAIRS].send(frame.decode())

    try:
        await _paced(rate, count, send)
        await _wait_for(lambda: bool(errors) or (len(incoming) >= count and len(started) >= count))
    finally:
        for socket in callers + callees:
            await socket.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} error frames, first {errors[0]}")
    return Latencies(f"{name} incoming", rate, count, incoming), Latencies(f"{name} started", rate, count, started)


async def pubsub_floor(redis_url: str, prefix: str, *, rate: float, count: int) -> Latencies:
    """PUBLISH -> subscriber, one client process: what delivering a frame over the bus costs."""
    client = Redis.from_url(redis_url)
    pubsub = client.pubsub()
    channel = f"{prefix}user:floor-{secrets.token_hex(3)}"
    await pubsub.subscribe(channel)
    while (await pubsub.get_message(timeout=1)) is None:  # the subscribe confirmation
        pass
    sent_at: dict[int, float] = {}
    samples: list[float] = []

    async def read() -> None:
        while len(samples) < count:
            message = await pubsub.get_message(timeout=None)
            if message and message["type"] == "message":
                at = time.perf_counter()
                samples.append((at - sent_at[orjson.loads(message["data"])["frame"]["seq"]]) * 1000)

    async def send(i: int) -> None:
        # Shaped like the bus's envelope around call.incoming, so the bytes match too.
        frame = {
            "type": "call.incoming",
            "seq": i,
            "call_id": str(uuid.uuid4()),
            "caller": "c-0",
            "ring_deadline": 0,
            "server_time": 0,
        }
        payload = orjson.dumps({"frame": frame, "only": None, "exclude": []})
        sent_at[i] = time.perf_counter()
        await client.publish(channel, payload)

    reader = asyncio.create_task(read())
    try:
        await _paced(rate, count, send)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, DRAIN_TIMEOUT)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return Latencies("redis publish->subscriber", rate, count, samples)


def report(rows: list[Latencies], floors: dict[float, Latencies]) -> list[str]:
    lines = [
        "## call set-up latency (open loop, ms; ratio = against the Redis pub/sub floor at the same rate)",
        f"{'path':<28}{'rate/s':>7}{'n':>6}{'lost':>5}{'p50':>8}{'p99':>8}{'p50 x':>7}{'p99 x':>7}",
    ]
    for row in rows:
        floor = floors[row.rate]
        lines.append(
            f"{row.name:<28}{row.rate:>7.0f}{row.sent:>6}{row.lost:>5}{row.p(50):>8.2f}{row.p(99):>8.2f}"
            f"{ratio(row.p(50), floor.p(50)):>7.1f}{ratio(row.p(99), floor.p(99)):>7.1f}"
        )
    return lines
