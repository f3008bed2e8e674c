"""The SIP gateway under sipp: full calls per second one node sustains, the node's CPU
per call, and memory per ringing call; sipp against a sipp UAS at the same rates for the
tool's own ceiling and CPU per call.

    python -m bench --sip [--quick] [--rates 100,200] [--profile [--profile-raw FILE]]
                               (about 3 min; --quick about 40 s)

1. Full cycles: sipp's built-in UAC INVITEs `alice` on the node. alice has a device
   registered with a VoIP token (so every call sends a push, to an APNs simulator in a
   process of its own, `bench/apns_sim.py`) and connected over WebSocket, where an
   asyncio client here answers every `call.incoming` with SDP. The node sends 200, sipp
   ACKs and BYEs. Per rate: calls sipp counted successful and failed, its INVITE -> 200
   time, the run's wall time, the calls the app saw answered and ended, and the node's
   CPU per call (/proc/<pid>/stat over the run, less the idle node's own CPU over as
   long). A rate is sustained when no call failed and the node kept pace: every call
   ended within PACE_SLACK of the last INVITE (sipp counts a call answered seconds late
   as successful).
2. The same UAC against `sipp -sn uas` (answers at once) after each rate: the ceiling of
   sipp itself, and the UAS process's CPU per call, the baseline the node's is set against.
3. Memory: the node's RSS (VmRSS) with N calls ringing (INVITEd, nobody answering, a push
   each) against the same node just before; then sipp CANCELs them all. Not with --quick.
   Then Redis round trips per full call, counted inside the node (bench/redis_count.py).
4. --profile: py-spy samples the node under full calls at PROFILE_RATE first (a run of its
   own: the sampling slows the node); --profile-raw keeps the raw stacks.

The node is pinned to one CPU, sipp, the app device, the simulator and Redis to the
other. The node's per-source SIP rate limit is lifted (SIP_RATE/SIP_BURST): sipp is a
single source; so is the WebSocket frame limit (VOIP_WS_RATE/BURST), as one device
answers every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import os
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from bench import devices
from bench.apns_sim import runq_seconds
from bench.noise import Noise
from bench.procs import Cluster, NodeProcess, cpu_plan, cpu_seconds
from bench.profile import NOT_INSTALLED, spy_on
from bench.push import SimProcess
from bench.redis_count import PATH as ROUND_TRIPS
from bench.stats import median
from tests.ports import free_port
from voip.stores.layout import BUCKETS, KeyLayout

RATES = (25, 50, 100, 150, 200, 250, 300, 400)  # calls per second
QUICK_RATES = (50, 100)
SECONDS = 5.0  # of INVITEs per rate
IDLE_SECONDS = 2.0  # the idle node's own CPU (heartbeats, ring-timeout ticks), measured once
PROFILE_RATE = 50  # calls per second under py-spy: one the node sustains
PROFILE_SECONDS = 8.0
COUNT_CALLS, COUNT_RATE = 50, 25  # calls whose Redis round trips are counted
PACE_SLACK = 1.0  # seconds past the last INVITE by which every call of a rate has ended
GOAL_MS, GOAL_RATE = 4.0, 250.0  # issue 12: node CPU per full SIP call, calls/s per core
RINGING = 500
APP_SDP = (
    "v=0\r\no=app 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
# INVITE, hold while ringing, CANCEL: N calls ringing at once for the memory figure.
RING_THEN_CANCEL = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="ring then cancel">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
]]></send>
  <recv response="100"/>
  <pause/>
  <send><![CDATA[
CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-1]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0
]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-2]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
]]></send>
</scenario>
"""


@dataclass(frozen=True)
class SippRun:
    target: str
    rate: float
    calls: int
    ok: int
    failed: int
    seconds: float
    invite_to_200_ms: float


@dataclass
class AutoAnswer:
    """alice's app: answers every call it hears of, counts what comes back."""

    socket: ClientConnection
    incoming: int = 0
    answered: int = 0
    refused: int = 0
    ended: int = 0

    async def run(self) -> None:
        seq = 0
        with contextlib.suppress(Exception):
            async for message in self.socket:
                frame: dict[str, Any] = orjson.loads(message)
                kind = frame.get("type")
                if kind == "call.incoming":
                    self.incoming += 1
                    seq += 1
                    await self.socket.send(
                        orjson.dumps(
                            {
                                "type": "call.answer",
                                "id": f"a{seq}",
                                "call_id": frame["call_id"],
                                "sdp": APP_SDP,
                            }
                        ).decode()
                    )
                elif kind == "ack":
                    self.answered += 1
                elif kind == "error":
                    self.refused += 1
                elif kind == "call.ended":
                    self.ended += 1


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _duration_ms(value: str) -> float:
    # sipp writes durations as hh:mm:ss:micro
    hours, minutes, seconds, micros = (int(x) for x in value.split(":"))
    return (hours * 3600 + minutes * 60 + seconds) * 1000 + micros / 1000


async def sipp(target: str, args: list[str], work: Path, timeout: float = 60) -> tuple[int, dict[str, str], float]:
    """Runs sipp to the end; returns its exit status, its last statistics row, wall time."""
    work.mkdir(parents=True, exist_ok=True)
    stats = work / "stats.csv"
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "sipp",
        target,
        *args,
        "-i",
        "127.0.0.1",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stats),
        "-fd",
        "1",
        "-timeout",
        str(int(timeout)),
        "-timeout_error",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=work,
    )
    rc = await process.wait()
    wall = time.perf_counter() - began
    with stats.open() as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return rc, rows[-1], wall


async def full_cycles(target: str, rate: float, calls: int, work: Path, user: str = "alice") -> SippRun:
    _rc, row, wall = await sipp(
        target,
        ["-sn", "uac", "-s", user, "-r", str(rate), "-m", str(calls), "-d", "0", "-l", str(calls)],
        work,
        timeout=calls / rate + 10,
    )
    return SippRun(
        target=target,
        rate=rate,
        calls=calls,
        ok=int(row["SuccessfulCall(C)"]),
        failed=int(row["FailedCall(C)"]) + (calls - int(row["SuccessfulCall(C)"]) - int(row["FailedCall(C)"])),
        seconds=wall,
        invite_to_200_ms=_duration_ms(row["ResponseTime1(C)"]),
    )


async def ringing_memory(cluster: Cluster, node: NodeProcess, sip_target: str, work: Path) -> tuple[int, int, int]:
    """(RSS before, RSS with RINGING calls ringing, calls ringing then) in KiB."""
    scenario = work / "ring_then_cancel.xml"
    work.mkdir(parents=True, exist_ok=True)
    scenario.write_text(RING_THEN_CANCEL)
    hold_ms = 6000
    # Warm-up: the first calls pay for lazy imports and caches, not per call.
    await sipp(sip_target, ["-sf", str(scenario), "-s", "bob", "-d", "500", "-r", "50", "-m", "50"], work / "warm")
    await asyncio.sleep(0.5)
    before = rss_kib(node.process.pid)
    run = asyncio.create_task(
        sipp(
            sip_target,
            [
                "-sf",
                str(scenario),
                "-s",
                "bob",
                "-d",
                str(hold_ms),
                "-r",
                "500",
                "-m",
                str(RINGING),
                "-l",
                str(RINGING),
            ],
            work / "ring",
        )
    )
    await asyncio.sleep(RINGING / 500 + 2.0)  # every INVITE sent and answered 100, none cancelled yet
    peak = rss_kib(node.process.pid)
    ringing = await _count_ringing(cluster)
    await run
    return before, peak, ringing


async def _count_ringing(cluster: Cluster) -> int:
    # Every ringing call has its ring deadline in one of these sorted sets until it ends.
    client = Redis.from_url(cluster.redis_url)
    layout = KeyLayout(cluster.prefix)
    try:
        return sum([int(await client.zcard(layout.ring_bucket(b))) for b in range(BUCKETS)])
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Usage:
    """A process's CPU and run-queue seconds at one instant."""

    cpu: float
    runq: float
    at: float

    @classmethod
    def of(cls, pid: int) -> Usage:
        return cls(cpu_seconds(pid), runq_seconds(str(pid)), time.perf_counter())


@dataclass(frozen=True)
class RateRow:
    node: SippRun
    base: SippRun
    pushes: int  # requests the APNs simulator received in the node's window
    sim_cpu_ms: float  # the simulator's CPU per call
    node_cpu_ms: float  # per call, the idle node's own CPU over the window taken off
    node_core: float  # share of the window the node ran
    node_runq: float  # share of the window it was runnable but waited for a CPU
    uas_cpu_ms: float  # sipp's UAS, per call
    answered: int
    ended: int

    @property
    def kept_pace(self) -> bool:
        """The calls ended within PACE_SLACK of the last INVITE: a node that cannot keep up
        answers late, and sipp still counts those calls as successful."""
        return self.node.seconds <= self.node.calls / self.node.rate + PACE_SLACK

    @property
    def sustained(self) -> bool:
        return self.node.failed == 0 and self.node.ok == self.node.calls and self.kept_pace

    def line(self) -> str:
        node, base = self.node, self.base
        times = self.node_cpu_ms / self.uas_cpu_ms if self.uas_cpu_ms else float("nan")
        return (
            f"| {node.rate:g} | {node.calls} | {node.ok} / {node.failed} | {node.invite_to_200_ms:.1f}"
            f" | {node.seconds:.1f} | {self.node_cpu_ms:.2f} | {self.node_core:.0%} | {self.node_runq:.0%}"
            f" | {self.pushes / node.calls:.2f} | {self.sim_cpu_ms:.2f}"
            f" | {self.answered} / {self.ended} | {base.ok} / {base.failed} | {base.invite_to_200_ms:.1f}"
            f" | {self.uas_cpu_ms:.3f} | {times:.0f} |"
        )


HEADER = [
    "| rate (calls/s) | calls | node: ok / failed | node: INVITE->200 avg ms | node: wall s | node: CPU ms/call"
    " | node: core | node: runq | pushes / call | APNs sim: CPU ms/call | app answered / ended"
    " | sipp UAS: ok / failed | sipp UAS: INVITE->200 avg ms | sipp UAS: CPU ms/call | node / UAS CPU |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


@dataclass(frozen=True)
class Verdict:
    """The sustained rates of a ladder: the highest, and node and sipp UAS CPU per call
    over them (medians), in one run."""

    best_rate: float
    node_ms: list[float]  # sorted, over the sustained rates
    uas_ms: list[float]

    @classmethod
    def of(cls, rows: list[RateRow]) -> Verdict:
        sustained = [row for row in rows if row.sustained]
        return cls(
            best_rate=max((row.node.rate for row in sustained), default=0.0),
            node_ms=sorted(row.node_cpu_ms for row in sustained),
            uas_ms=sorted(row.uas_cpu_ms for row in sustained),
        )

    @property
    def node_median(self) -> float:
        return median(self.node_ms) if self.node_ms else math.nan

    @property
    def uas_median(self) -> float:
        return median(self.uas_ms) if self.uas_ms else math.nan

    @property
    def met(self) -> bool:
        return self.best_rate >= GOAL_RATE and self.node_median <= GOAL_MS


def summary(rows: list[RateRow], idle_ms_per_s: float) -> list[str]:
    verdict = Verdict.of(rows)
    lines = [f"sustained with no failed call, keeping pace: {verdict.best_rate:g} calls/s (goal >= {GOAL_RATE:g})"]
    if verdict.node_ms:
        costs, uas, mid = verdict.node_ms, verdict.uas_ms, verdict.node_median
        lines.append(
            f"node CPU per call over the sustained rates: {costs[0]:.2f}-{costs[-1]:.2f} ms, median {mid:.2f}"
            f" (goal <= {GOAL_MS:g}; one core at the median: {1000 / mid:.0f} calls/s);"
            f" sipp UAS {uas[0]:.3f}-{uas[-1]:.3f} ms"
        )
    lines.append(f"(the idle node's own {idle_ms_per_s:.1f} ms CPU per second is taken off each window)")
    return lines


async def _profile(node: NodeProcess, target: str, work: Path, raw_copy: Path | None) -> list[str]:
    spy = spy_on(node.process.pid, PROFILE_SECONDS)
    if spy is None:
        return [NOT_INSTALLED]
    await full_cycles(target, PROFILE_RATE, int(PROFILE_RATE * PROFILE_SECONDS), work / "profile")
    lines = spy.collect(focus="SipEndpoint._datagram", raw_copy=raw_copy)
    head = f"### profile: sipp full calls at {PROFILE_RATE}/s for {PROFILE_SECONDS:g} s (py-spy, 250 Hz)"
    return [head, *lines]


async def round_trips_per_call(node: NodeProcess, target: str, work: Path) -> list[str]:
    """Redis round trips per full SIP call, counted inside the node (bench/redis_count.py),
    less those of an idle window as long (heartbeats, ring-timeout ticks)."""
    url = f"{node.base_url}{ROUND_TRIPS}"
    windows: list[Counter[str]] = []
    async with httpx.AsyncClient(timeout=10) as http:
        for busy in (True, False):
            (await http.post(f"{url}?on=1")).raise_for_status()
            began = time.perf_counter()
            if busy:
                await full_cycles(target, COUNT_RATE, COUNT_CALLS, work / "count")
                elapsed = time.perf_counter() - began
            else:
                await asyncio.sleep(elapsed)
            response = await http.get(url)
            response.raise_for_status()
            windows.append(Counter(response.json()["kinds"]))
        (await http.post(f"{url}?on=0")).raise_for_status()
    busy_kinds, idle_kinds = windows
    total = (sum(busy_kinds.values()) - sum(idle_kinds.values())) / COUNT_CALLS
    lines = [f"Redis round trips per full SIP call: {total:.2f} ({COUNT_CALLS} calls at {COUNT_RATE}/s)"]
    for kind in sorted(busy_kinds | idle_kinds, key=lambda k: idle_kinds[k] - busy_kinds[k]):
        if busy_kinds[kind] != idle_kinds[kind]:
            lines.append(f"  {(busy_kinds[kind] - idle_kinds[kind]) / COUNT_CALLS:6.2f}  {kind}")
    return lines


@dataclass(frozen=True)
class Result:
    rows: list[RateRow]
    lines: list[str]  # the summary


async def measure(
    cluster: Cluster,
    node: NodeProcess,
    sim: SimProcess,
    sip_port: int,
    work: Path,
    *,
    rates: tuple[float, ...] = RATES,
    memory: bool = True,
    profile: bool = False,
    profile_raw: Path | None = None,
) -> Result:
    """Prints the profile and the table as it goes; returns the rows and the summary lines."""
    lines: list[str] = []
    rows: list[RateRow] = []
    await devices.register(node.base_url, cluster.auth, "alice", "alice-app")
    await devices.register(node.base_url, cluster.auth, "bob", "bob-asleep")  # rung by push only
    app = AutoAnswer(await devices.connect(node.ws_url, cluster.auth, "alice", "alice-app"))
    reader = asyncio.create_task(app.run())
    target = f"127.0.0.1:{sip_port}"
    pid = node.process.pid

    uas_port = free_port()
    uas = subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        memory_line = ""
        if memory:
            # Memory first, on a node no overload has left a backlog in.
            idle_kib, peak, ringing = await ringing_memory(cluster, node, target, work / "memory")
            per_call = (peak - idle_kib) / max(ringing, 1)
            memory_line = (
                f"memory: RSS {idle_kib / 1024:.1f} MiB idle, {peak / 1024:.1f} MiB with {ringing} calls ringing"
                f" -> {per_call:.1f} KiB per ringing call"
            )
            print(memory_line, flush=True)
        else:
            # The warm-up the memory run does: lazy imports and caches, not per call.
            await full_cycles(target, 50, 50, work / "warm")
        trips = await round_trips_per_call(node, target, work)
        print("\n".join(trips), flush=True)
        if profile:
            print("\n".join(await _profile(node, target, work, profile_raw)), flush=True)
        await asyncio.sleep(1.0)
        idle0 = Usage.of(pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle1 = Usage.of(pid)
        idle_per_s = (idle1.cpu - idle0.cpu) / (idle1.at - idle0.at)
        print("\n".join(HEADER), flush=True)
        for rate in rates:
            calls = int(rate * SECONDS)
            answered0, ended0 = app.answered, app.ended
            before, sim0 = Usage.of(pid), sim.ask("stats")
            node_run = await full_cycles(target, rate, calls, work / f"node-{rate}")
            await asyncio.sleep(0.5)  # the last calls' timeline entries go out in batches
            after, sim1 = Usage.of(pid), sim.ask("stats")
            sim.ask("clear")  # its records of every push: memory stays flat
            uas0 = cpu_seconds(uas.pid)
            base = await full_cycles(f"127.0.0.1:{uas_port}", rate, calls, work / f"uas-{rate}")
            uas1 = cpu_seconds(uas.pid)
            wall = after.at - before.at
            busy = after.cpu - before.cpu
            row = RateRow(
                node=node_run,
                base=base,
                pushes=sim1["requests"] - sim0["requests"],
                sim_cpu_ms=(sim1["cpu_s"] - sim0["cpu_s"]) * 1000 / calls,
                node_cpu_ms=max(busy - idle_per_s * wall, 0.0) * 1000 / calls,
                node_core=busy / wall,
                node_runq=(after.runq - before.runq) / wall,
                uas_cpu_ms=(uas1 - uas0) * 1000 / calls,
                answered=app.answered - answered0,
                ended=app.ended - ended0,
            )
            rows.append(row)
            print(row.line(), flush=True)
            if row.node.failed or row.node.ok < row.node.calls:
                break  # past the ceiling: the calls left ringing would only load the next rate
        lines += summary(rows, idle_per_s * 1000)
        lines.append(trips[0])
        if memory_line:
            lines.append(memory_line)
    finally:
        uas.terminate()
        uas.wait(5)
        reader.cancel()
        await app.socket.close()
    return Result(rows, lines)


def node_env(sip_port: int) -> dict[str, str]:
    return {
        "SIP_ENABLED": "true",
        "SIP_HOST": "127.0.0.1",
        "SIP_PORT": str(sip_port),
        "SIP_DOMAIN": "bench.test",
        "SIP_RATE": "100000",
        "SIP_BURST": "100000",
        # One app device answers every call; its per-connection frame limit (20/s) is an
        # app-side guard, not what this bench measures.
        "VOIP_WS_RATE": "100000",
        "VOIP_WS_BURST": "100000",
        "BENCH_COUNT_ROUND_TRIPS": "1",
    }


async def run(
    *, rates: tuple[float, ...], memory: bool, profile: bool = False, profile_raw: Path | None = None
) -> Result:
    """The whole bench in this event loop: Redis, the APNs simulator, the node and sipp,
    placed as the module says, and stopped again; this process's CPU affinity restored."""
    server_cpu, load_cpu = cpu_plan()
    affinity = os.sched_getaffinity(0)
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})
    # The APNs simulator in a process of its own, on the load CPU: in production the far
    # end of a push is Apple's, not the node's CPU.
    sim = SimProcess(load_cpu)
    try:
        with Cluster(server_cpu) as cluster, tempfile.TemporaryDirectory(prefix="voip-sip-bench-") as tmp:
            sip_port = free_port()
            node = cluster.start_node("sip", env={**sim.settings(), **node_env(sip_port)})
            return await measure(
                cluster,
                node,
                sim,
                sip_port,
                Path(tmp),
                rates=rates,
                memory=memory,
                profile=profile,
                profile_raw=profile_raw,
            )
    finally:
        sim.stop()
        os.sched_setaffinity(0, affinity)


def main(*, quick: bool = False, rates: tuple[float, ...] = (), profile: bool = False, profile_raw: str = "") -> None:
    """`quick`: two rates and no memory run; `rates`: these instead of RATES; `profile`:
    py-spy the node under sipp at PROFILE_RATE first."""
    server_cpu, load_cpu = cpu_plan()
    began, noise = time.monotonic(), Noise()
    print(f"# SIP bench: node on CPU {server_cpu}; sipp, app device and Redis on CPU {load_cpu}", flush=True)
    result = asyncio.run(
        run(
            rates=rates or (QUICK_RATES if quick else RATES),
            memory=not quick,
            profile=profile,
            profile_raw=Path(profile_raw) if profile_raw else None,
        )
    )
    print("\n".join(result.lines))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
