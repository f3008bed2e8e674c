"""App-to-app calls over WebSocket: the node's CPU per call, against the same node echoing
the same frames over bare WebSockets, in one run.

    python -m bench --app-calls [--quick] [--profile]     (about 40 s; --quick about 15 s)
    python -m bench --app-calls-pair OTHER [OTHER ...] [--rounds 6]
        this checkout's node and other checkouts' (`git archive main | tar -x -C /tmp/main`),
        their windows of calls interleaved on the same CPU: node CPU per call as a ratio

1. Calls: PAIRS caller/callee device pairs (asyncio clients in this process), each in a
   closed loop of whole calls: `call.start` -> `call.started`; the callee hears
   `call.incoming` and sends `call.answer` -> `ack` (and `call.answered`); the caller hears
   `call.answered` and sends `call.hangup` -> `ack`; the callee hears `call.ended`. A call
   counts once both ends have heard the last of it. No device has a VoIP token: no push.
2. Baseline: the same node's bare echo WebSocket (bench/server.py, `/bench/echo`), the same
   number of sockets, each loop sending as many frames in and taking as many frames out,
   of the same mean size, as one call did in part 1: what the WebSocket layer itself costs.
3. Rounds interleave the two. The node's CPU comes from /proc/<pid>/stat over each window,
   less the idle node's own (heartbeats, ring-timeout ticks) over as long; the figure is a
   median over rounds: CPU ms per call, and that over the echo's ms per call-sized exchange.

The node has a CPU to itself; this process and Redis share the other. --profile: py-spy
samples the node through one more window of calls, after the measured rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from bench import devices
from bench.noise import Noise
from bench.procs import ROOT, Cluster, NodeProcess, cpu_plan, cpu_seconds
from bench.profile import NOT_INSTALLED, spy_on
from bench.server import ECHO_PATH
from bench.stats import median, ratio

GOAL_MS = 2.0  # issue 12: node CPU per app-to-app call
PAIRS = 16
IDLE_SECONDS = 2.0
NODE_ENV = {
    # One device makes thousands of calls: the per-socket frame limit is an app-side guard,
    # not what is measured (bench/scale.py and bench/sip.py lift it too).
    "VOIP_WS_RATE": "1000000",
    "VOIP_WS_BURST": "1000000",
}
SDP = "v=0\r\no=app 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float  # measured, per round and kind
    warmup: float


FULL = Plan(rounds=3, seconds=4.0, warmup=1.0)
QUICK = Plan(rounds=1, seconds=2.0, warmup=0.5)


@dataclass
class Device:
    """One socket: every frame it hears, until someone waits for it; what went each way."""

    socket: ClientConnection
    user: str = ""
    heard: deque[dict[str, Any]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    frames_in: int = 0  # into the node
    frames_out: int = 0  # out of the node
    bytes_in: int = 0
    bytes_out: int = 0
    reader: asyncio.Task[None] | None = None

    def start(self) -> Device:
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.socket:
                self.frames_out += 1
                self.bytes_out += len(message)
                self.heard.append(orjson.loads(message))
                self.arrived.set()

    async def send(self, frame: dict[str, Any]) -> None:
        text = orjson.dumps(frame).decode()
        self.frames_in += 1
        self.bytes_in += len(text)
        await self.socket.send(text)

    async def expect(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame heard (or still to come) that matches; the ones before it stay."""
        while True:
            for frame in self.heard:
                if match(frame):
                    self.heard.remove(frame)
                    return frame
            self.arrived.clear()
            async with asyncio.timeout(10):  # not wait_for: on 3.11 it can swallow a cancel
                await self.arrived.wait()

    async def close(self) -> None:
        await self.socket.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def call(caller: Device, callee: Device, ids: itertools.count[int]) -> None:
    """One whole call, start to both ends having heard it end."""
    start_id, answer_id, hangup_id = next(ids), next(ids), next(ids)
    await caller.send({"type": "call.start", "id": start_id, "callee": callee.user, "sdp": SDP})
    started = await caller.expect(lambda f: f.get("id") == start_id)
    if started["type"] != "call.started":
        raise RuntimeError(f"call.start refused: {started}")
    call_id = started["call_id"]
    await callee.expect(lambda f: f["type"] == "call.incoming" and f["call_id"] == call_id)
    await callee.send({"type": "call.answer", "id": answer_id, "call_id": call_id, "sdp": SDP})
    await callee.expect(lambda f: f.get("id") == answer_id and f["type"] == "ack")
    await callee.expect(lambda f: f["type"] == "call.answered" and f["call_id"] == call_id)
    await caller.expect(lambda f: f["type"] == "call.answered" and f["call_id"] == call_id)
    await caller.send({"type": "call.hangup", "id": hangup_id, "call_id": call_id})
    await caller.expect(lambda f: f.get("id") == hangup_id and f["type"] == "ack")
    await callee.expect(lambda f: f["type"] == "call.ended" and f["call_id"] == call_id)


@dataclass
class Exchange:
    """What one call put through the node's sockets, for the echo to do the same."""

    frames_in: float
    frames_out: float
    bytes_per_frame: int

    def replies(self) -> list[int]:
        """Frames back per frame sent, spread over the frames sent (sums to frames_out)."""
        sent, back = max(1, round(self.frames_in)), max(1, round(self.frames_out))
        return [back // sent + (1 if i < back % sent else 0) for i in range(sent)]


@dataclass(frozen=True)
class Window:
    kind: str  # "call" or "echo"
    units: int  # calls, or call-sized exchanges
    seconds: float
    cpu_s: float  # the node's, less its idle CPU over the window

    @property
    def ms_per_unit(self) -> float:
        return self.cpu_s * 1000 / self.units if self.units else float("nan")

    @property
    def rate(self) -> float:
        return self.units / self.seconds


class Rig:
    def __init__(self, cluster: Cluster, node: NodeProcess) -> None:
        self.cluster, self.node = cluster, node
        self.idle_per_s = 0.0
        self.exchange = Exchange(0, 0, 0)
        self.tags = itertools.count()

    async def idle(self) -> None:
        pid = self.node.process.pid
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        self.idle_per_s = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)

    async def _window(self, kind: str, loop: Callable[[int, list[int]], Awaitable[None]], plan: Plan) -> Window:
        """`loop(k, done)` runs unit after unit, adding to done[0], until done[1] is set
        (then it ends after the unit in hand) or it is cancelled."""
        done = [0, 0]
        pid = self.node.process.pid
        tasks = [asyncio.create_task(loop(k, done)) for k in range(PAIRS)]
        try:
            await asyncio.sleep(plan.warmup)
            units0, cpu0, t0 = done[0], cpu_seconds(pid), time.perf_counter()
            await asyncio.sleep(plan.seconds)
            units1, cpu1, t1 = done[0], cpu_seconds(pid), time.perf_counter()
            done[1] = 1
            async with asyncio.timeout(15):
                results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise failures[0]
        busy = max(cpu1 - cpu0 - self.idle_per_s * (t1 - t0), 0.0)
        return Window(kind, units1 - units0, t1 - t0, busy)

    async def calls(self, plan: Plan) -> Window:
        tag = next(self.tags)
        auth, url = self.cluster.auth, self.node.ws_url
        pairs: list[tuple[Device, Device]] = []
        for k in range(PAIRS):
            caller = Device(await devices.connect(url, auth, f"caller{tag}-{k}", "phone")).start()
            callee_id = f"callee{tag}-{k}"
            callee = Device(await devices.connect(url, auth, callee_id, "phone"), callee_id).start()
            pairs.append((caller, callee))
        ids = itertools.count(1)

        async def loop(k: int, done: list[int]) -> None:
            caller, callee = pairs[k]
            while not done[1]:
                await call(caller, callee, ids)
                done[0] += 1

        everyone = [device for pair in pairs for device in pair]
        try:
            # Counted from the first call on: hello frames are not the calls'.
            for device in everyone:
                device.frames_in = device.frames_out = device.bytes_in = device.bytes_out = 0
            window = await self._window("call", loop, plan)
        finally:
            for device in everyone:
                await device.close()
        # Per call over the whole run, warm-up included: every call sends three frames in
        # (start, answer, hang-up), so those count the calls, the few cut short included.
        frames_in = sum(d.frames_in for d in everyone)
        frames_out = sum(d.frames_out for d in everyone)
        calls = max(1, frames_in / 3)
        size = sum(d.bytes_in + d.bytes_out for d in everyone) // max(1, frames_in + frames_out)
        self.exchange = Exchange(frames_in / calls, frames_out / calls, size)
        return window

    async def echo(self, plan: Plan) -> Window:
        url = self.node.ws_url.replace("/v1/ws", ECHO_PATH)
        sockets = [await websockets.connect(url, max_queue=None) for _ in range(PAIRS * 2)]
        replies = self.exchange.replies()
        payload = "x" * self.exchange.bytes_per_frame

        async def loop(k: int, done: list[int]) -> None:
            # A pair's two sockets take turns, as the caller and the callee do in a call.
            pair = sockets[2 * k : 2 * k + 2]
            while not done[1]:
                for i, back in enumerate(replies):
                    socket = pair[i % 2]
                    await socket.send(f"{back} {payload}")
                    for _ in range(back):
                        await socket.recv()
                done[0] += 1

        try:
            return await self._window("echo", loop, plan)
        finally:
            for socket in sockets:
                await socket.close()


@dataclass(frozen=True)
class Result:
    windows: list[Window]
    exchange: Exchange
    idle_ms_per_s: float
    profile: tuple[str, ...] = ()

    def of(self, kind: str) -> list[Window]:
        return [w for w in self.windows if w.kind == kind]

    @property
    def call_ms(self) -> float:
        return median([w.ms_per_unit for w in self.of("call")])

    @property
    def echo_ms(self) -> float:
        return median([w.ms_per_unit for w in self.of("echo")])

    @property
    def met(self) -> bool:
        return self.call_ms <= GOAL_MS

    def lines(self) -> list[str]:
        x = self.exchange
        lines = [
            f"one call: {x.frames_in:.1f} frames into the node, {x.frames_out:.1f} out, {x.bytes_per_frame} bytes"
            f" a frame on average; the echo baseline sends and takes as many, as large",
            "| round | kind | units | units/s | node CPU ms/unit |",
            "| ---: | --- | ---: | ---: | ---: |",
        ]
        for i, w in enumerate(self.windows):
            lines.append(f"| {i // 2 + 1} | {w.kind} | {w.units} | {w.rate:.0f} | {w.ms_per_unit:.3f} |")
        lines.append(
            f"node CPU per app-to-app call: {self.call_ms:.2f} ms (goal <= {GOAL_MS:g}), bare echo of the same"
            f" frames {self.echo_ms:.3f} ms: {ratio(self.call_ms, self.echo_ms):.1f} x;"
            f" the idle node's own {self.idle_ms_per_s:.1f} ms CPU per second taken off each window"
        )
        return [*lines, *self.profile]


async def _profile(rig: Rig, plan: Plan) -> tuple[str, ...]:
    spy = spy_on(rig.node.process.pid, plan.warmup + plan.seconds)
    if spy is None:
        return (NOT_INSTALLED,)
    await rig.calls(plan)
    return ("### profile: app-to-app calls (py-spy, 250 Hz)", *spy.collect(focus="DeviceConnection._handle"))


async def run(plan: Plan, *, profile: bool = False) -> Result:
    """The whole bench in this event loop: Redis and the node started and stopped here;
    this process's CPU affinity restored."""
    server_cpu, load_cpu = cpu_plan()
    affinity = os.sched_getaffinity(0)
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})  # Redis starts from here, and inherits it
    try:
        with Cluster(server_cpu) as cluster:
            rig = Rig(cluster, cluster.start_node("app-calls", env=NODE_ENV))
            await rig.idle()
            windows: list[Window] = []
            for _ in range(plan.rounds):
                windows.append(await rig.calls(plan))
                windows.append(await rig.echo(plan))
            lines = await _profile(rig, plan) if profile else ()
            return Result(windows, rig.exchange, rig.idle_per_s * 1000, lines)
    finally:
        os.sched_setaffinity(0, affinity)


def pair_lines(per_call: dict[str, list[float]]) -> list[str]:
    """Each checkout's node CPU per call over the rounds, and its ratio to the first's,
    taken round by round (the rounds are what saw the same machine)."""
    first_label, first = next(iter(per_call.items()))
    lines = []
    for label, costs in per_call.items():
        ratios = [mine / theirs for mine, theirs in zip(costs, first, strict=True)]
        lines.append(
            f"{label}: median {median(costs):.3f} ms per call ({min(costs):.3f}-{max(costs):.3f});"
            f" x {first_label}: median {median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return lines


async def run_pair(roots: list[tuple[str, Path]], plan: Plan) -> list[str]:
    """Nodes of several checkouts on one Redis and one CPU, their call windows back to back
    and interleaved (each round in another order), so the machine's moods fall on all
    alike: node CPU per call of each, and its ratio to the first's, round by round."""
    server_cpu, load_cpu = cpu_plan()
    affinity = os.sched_getaffinity(0)
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})
    try:
        with Cluster(server_cpu) as cluster:
            rigs = [(label, Rig(cluster, cluster.start_node(label, env=NODE_ENV, root=root))) for label, root in roots]
            for _, rig in rigs:
                await rig.idle()
                await rig.calls(Plan(rounds=1, seconds=1.0, warmup=0.5))  # warm: imports, caches, scripts
            per_call: dict[str, list[float]] = {label: [] for label, _ in rigs}
            lines = [f"## node CPU per app-to-app call, {len(rigs)} checkouts, {plan.seconds:g} s windows"]
            for round_ in range(plan.rounds):
                order = rigs if round_ % 2 == 0 else rigs[::-1]
                cells = []
                for label, rig in order:
                    window = await rig.calls(plan)
                    per_call[label].append(window.ms_per_unit)
                    cells.append(f"{label} {window.ms_per_unit:.3f} ms ({window.rate:.0f} calls/s)")
                lines.append(f"round {round_ + 1}: " + "; ".join(cells))
                print(lines[-1], flush=True)
            return [*lines, *pair_lines(per_call)]
    finally:
        os.sched_setaffinity(0, affinity)


def main_pair(others: list[str], *, rounds: int = 6, quick: bool = False) -> None:
    """`python -m bench --app-calls-pair OTHER [OTHER ...]`: this checkout's node first."""
    from bench.__main__ import _run, machine

    roots = [("this", ROOT)]
    for i, other in enumerate(others):
        root = Path(other).resolve()
        if not (root / "bench" / "server.py").exists():
            raise SystemExit(f"{other}: not a checkout of this project (no bench/server.py)")
        roots.append((f"{root.name}#{i + 1}", root))
    began, noise = time.monotonic(), Noise()
    print(f"# app-to-app call pair bench: {machine()}", flush=True)
    plan = Plan(rounds=rounds, seconds=2.0 if quick else 3.0, warmup=0.5)
    lines = _run(run_pair(roots, plan))
    print("\n".join(line for line in lines if not line.startswith("round")))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")


def main(*, quick: bool = False, profile: bool = False) -> None:
    from bench.__main__ import _run, machine

    began, noise = time.monotonic(), Noise()
    server_cpu, load_cpu = cpu_plan()
    print(f"# app-to-app calls: {machine()}; node on CPU {server_cpu}, clients and Redis on {load_cpu}", flush=True)
    result = _run(run(QUICK if quick else FULL, profile=profile))
    print("\n".join(result.lines()))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
