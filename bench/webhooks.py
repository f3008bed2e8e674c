"""`python -m bench --webhooks [--quick]`: what delivering call-event webhooks costs a node.

Two nodes on one Redis, both pinned to the server CPU and used one at a time: "off" (no
VOIP_WEBHOOK_URLS) and "on" (VOIP_WEBHOOK_URLS = a receiver on loopback in this process,
with VOIP_WEBHOOK_SECRET). Each round runs, on each node in turn, the same calls: at
`rate` calls/s, a call.start to a connected callee, which declines it at once: two state
changes, so two events per call on "on" (call.created, call.declined), each signed and
POSTed by the node.

Figures per node and round: the node's CPU time (utime + stime, /proc) from the first
call.start until every decline is acknowledged and, on "on", the receiver has every event;
divided by the calls. The webhooks' cost per call is on minus off; per event, half of that.
Also: every event received exactly once (ids), and the delay from an event's `created_at`
to its arrival. And the idle cost: each node's CPU over a few seconds with no calls (the
delivery loop polls the due index).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from bench import devices
from bench.noise import Noise
from bench.procs import Cluster, NodeProcess, cpu_plan, cpu_seconds
from bench.stats import percentile
from tests.http_receiver import Answer, HttpReceiver, Received
from voip.auth import Authenticator
from voip.webhooks.signing import verify

SECRET = secrets.token_urlsafe(24)
PAIRS = 8
IDLE_SECONDS = 5.0


@dataclass
class Arrivals:
    """What the receiver took: (arrival ms, event) per request, signatures checked."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0

    def respond(self, request: Received) -> Answer:
        if not verify(SECRET, request.body, request.headers.get("voip-signature", "")):
            self.bad_signatures += 1
            return 401, b""
        self.events.append((time.time() * 1000, orjson.loads(request.body)))
        return 204, b""


@dataclass
class Round:
    node: str
    calls: int
    cpu_s: float
    events: int = 0
    unique: int = 0
    delays_ms: list[float] = field(default_factory=list)

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6


async def _read(socket: ClientConnection, on_frame: Any) -> None:
    with contextlib.suppress(Exception):
        async for message in socket:
            await on_frame(socket, orjson.loads(message))


async def run_calls(node: NodeProcess, auth: Authenticator, rate: float, count: int) -> None:
    """`count` calls at `rate`/s, each declined by its callee as soon as it rings; returns
    once every decline is acknowledged."""
    tag = secrets.token_hex(3)
    callers = [await devices.connect(node.ws_url, auth, f"c{tag}-{p}", "phone") for p in range(PAIRS)]
    callees = [await devices.connect(node.ws_url, auth, f"e{tag}-{p}", "phone") for p in range(PAIRS)]
    declined = 0
    done = asyncio.Event()
    errors: list[dict[str, Any]] = []

    async def on_callee(socket: ClientConnection, frame: dict[str, Any]) -> None:
        nonlocal declined
        if frame["type"] == "call.incoming":
            await socket.send(orjson.dumps({"type": "call.decline", "call_id": frame["call_id"], "id": 1}).decode())
        elif frame["type"] == "ack":
            declined += 1
            if declined >= count:
                done.set()
        elif frame["type"] == "error":
            errors.append(frame)
            done.set()

    async def on_caller(socket: ClientConnection, frame: dict[str, Any]) -> None:
        if frame["type"] == "error":
            errors.append(frame)
            done.set()

    readers = [asyncio.create_task(_read(s, on_callee)) for s in callees]
    readers += [asyncio.create_task(_read(s, on_caller)) for s in callers]
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = {"type": "call.start", "id": i, "callee": f"e{tag}-{i % PAIRS}", "call_id": str(uuid.uuid4())}
            await callers[i % PAIRS].send(orjson.dumps(frame).decode())
        await asyncio.wait_for(done.wait(), 60)
    finally:
        for socket in callers + callees:
            await socket.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    if errors:
        raise RuntimeError(f"{len(errors)} error frames, first {errors[0]}")


async def measure(
    node: NodeProcess, name: str, auth: Authenticator, arrivals: Arrivals | None, rate: float, count: int
) -> Round:
    before_events = len(arrivals.events) if arrivals else 0
    cpu_before = cpu_seconds(node.process.pid)
    await run_calls(node, auth, rate, count)
    if arrivals is not None:
        for _ in range(6000):  # up to a minute
            if len(arrivals.events) - before_events >= 2 * count:
                break
            await asyncio.sleep(0.01)
    cpu = cpu_seconds(node.process.pid) - cpu_before
    result = Round(name, count, cpu)
    if arrivals is not None:
        mine = arrivals.events[before_events:]
        result.events = len(mine)
        result.unique = len({event["id"] for _, event in mine})
        result.delays_ms = [at - event["created_at"] for at, event in mine]
    return result


async def idle_cpu(node: NodeProcess) -> float:
    """The node's CPU share (%) over IDLE_SECONDS with no calls."""
    before = cpu_seconds(node.process.pid)
    await asyncio.sleep(IDLE_SECONDS)
    return (cpu_seconds(node.process.pid) - before) / IDLE_SECONDS * 100


def report(rounds: list[Round], idle: dict[str, float], rate: float) -> list[str]:
    off = [r for r in rounds if r.node == "off"]
    on = [r for r in rounds if r.node == "on"]
    off_us = statistics.median(r.cpu_us_per_call for r in off)
    on_us = statistics.median(r.cpu_us_per_call for r in on)
    delays = sorted(d for r in on for d in r.delays_ms)
    lines = [
        f"## webhooks: node CPU per call, {rate:g} calls/s, each call.start then call.decline"
        f" (median of {len(on)} rounds)",
        "",
        "| node | CPU µs per call (each round) | median |",
        "|---|---|---|",
        f"| off | {', '.join(f'{r.cpu_us_per_call:.0f}' for r in off)} | {off_us:.0f} |",
        f"| on (2 events per call) | {', '.join(f'{r.cpu_us_per_call:.0f}' for r in on)} | {on_us:.0f} |",
        "",
        f"webhooks cost per call: {on_us - off_us:.0f} µs of node CPU ({(on_us - off_us) / 2:.0f} µs per event),"
        f" {on_us / off_us:.2f} x the call without them",
        f"events: {sum(r.events for r in on)} received for {2 * sum(r.calls for r in on)} sent,"
        f" {sum(r.unique for r in on)} distinct ids",
        f"delivery delay (event created_at -> receipt): p50 {percentile(delays, 50):.1f} ms,"
        f" p99 {percentile(delays, 99):.1f} ms, max {delays[-1]:.1f} ms",
        f"idle (no calls, {IDLE_SECONDS:g} s): off {idle['off']:.2f} % of a CPU, on {idle['on']:.2f} %",
    ]
    return lines


async def _main(
    cluster: Cluster, off: NodeProcess, on: NodeProcess, arrivals: Arrivals, rounds: int, rate: float, count: int
) -> list[str]:
    auth = cluster.auth
    # A warm-up on each, not counted: connections, the scripts loaded, the JIT-less paths run once.
    await measure(off, "off", auth, None, rate, min(count, 50))
    await measure(on, "on", auth, arrivals, rate, min(count, 50))
    results: list[Round] = []
    for _ in range(rounds):
        results.append(await measure(off, "off", auth, None, rate, count))
        results.append(await measure(on, "on", auth, arrivals, rate, count))
    idle = {"off": await idle_cpu(off), "on": await idle_cpu(on)}
    lines = report(results, idle, rate)
    if arrivals.bad_signatures:
        lines.append(f"BAD SIGNATURES: {arrivals.bad_signatures}")
    return lines


def main(*, quick: bool = False) -> None:
    rounds, rate, count = (1, 20.0, 100) if quick else (3, 20.0, 400)
    server_cpu, load_cpu = cpu_plan()
    noise = Noise()

    async def run() -> list[str]:
        arrivals = Arrivals()
        receiver = await HttpReceiver(respond=arrivals.respond).start()
        try:
            with Cluster(server_cpu) as cluster:
                off = cluster.start_node("off")
                on = cluster.start_node("on", env={"VOIP_WEBHOOK_URLS": receiver.url, "VOIP_WEBHOOK_SECRET": SECRET})
                return await _main(cluster, off, on, arrivals, rounds, rate, count)
        finally:
            await receiver.stop()

    print(f"# webhooks bench: nodes on CPU {server_cpu}, load, receiver and Redis on CPU {load_cpu}")
    if load_cpu >= 0:
        import os

        os.sched_setaffinity(0, {load_cpu})
    began = time.monotonic()
    print("\n".join(asyncio.run(run())))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
