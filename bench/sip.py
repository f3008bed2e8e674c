"""The SIP gateway under sipp: full calls per second one node sustains, and memory per
ringing call; sipp against a sipp UAS at the same rates for the tool's own ceiling.

    python -m bench --sip      (about 90 s)

1. Full cycles: sipp's built-in UAC INVITEs `alice` on the node. alice has a device
   registered with a VoIP token (so every call sends a push, to the node's bundled APNs
   simulator) and connected over WebSocket, where an asyncio client here answers every
   `call.incoming` with SDP. The node sends 200, sipp ACKs and BYEs. Per rate: calls
   sipp counted successful and failed, its INVITE -> 200 time, and the calls the app saw
   answered and ended. A rate is sustained when no call failed.
2. The same UAC against `sipp -sn uas` (answers at once): the ceiling of sipp itself.
3. Memory: the node's RSS (VmRSS) with N calls ringing (INVITEd, nobody answering, a push
   each) against the same node just before; then sipp CANCELs them all.

The node is pinned to one CPU, sipp, the app device and Redis to the other. The node's
per-source SIP rate limit is lifted (SIP_RATE/SIP_BURST): sipp is a single source; so is
the WebSocket frame limit (VOIP_WS_RATE/BURST), as one device answers every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from bench import devices
from bench.noise import Noise
from bench.procs import Cluster, NodeProcess, cpu_plan
from tests.ports import free_port
from voip.stores.layout import BUCKETS, KeyLayout

RATES = (10, 25, 50, 75, 100, 150)  # calls per second
SECONDS = 5.0  # of INVITEs per rate
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


async def measure(cluster: Cluster, node: NodeProcess, sip_port: int, work: Path) -> list[str]:
    lines: list[str] = []
    await devices.register(node.base_url, cluster.auth, "alice", "alice-app")
    await devices.register(node.base_url, cluster.auth, "bob", "bob-asleep")  # rung by push only
    app = AutoAnswer(await devices.connect(node.ws_url, cluster.auth, "alice", "alice-app"))
    reader = asyncio.create_task(app.run())
    target = f"127.0.0.1:{sip_port}"

    uas_port = free_port()
    uas = subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Memory first, on a node no overload has left a backlog in.
        before, peak, ringing = await ringing_memory(cluster, node, target, work / "memory")
        per_call = (peak - before) / max(ringing, 1)
        memory = (
            f"memory: RSS {before / 1024:.1f} MiB idle, {peak / 1024:.1f} MiB with {ringing} calls ringing"
            f" -> {per_call:.1f} KiB per ringing call"
        )
        print(memory, flush=True)
        lines.append(
            "| rate (calls/s) | calls | node: ok / failed | node: INVITE->200 avg ms | node: wall s"
            " | app answered / ended | sipp UAS: ok / failed | sipp UAS: INVITE->200 avg ms |"
        )
        lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        sustained = 0.0
        for rate in RATES:
            calls = int(rate * SECONDS)
            answered0, ended0 = app.answered, app.ended
            node_run = await full_cycles(target, rate, calls, work / f"node-{rate}")
            await asyncio.sleep(0.5)
            base = await full_cycles(f"127.0.0.1:{uas_port}", rate, calls, work / f"uas-{rate}")
            if node_run.failed == 0 and node_run.ok == calls:
                sustained = max(sustained, rate)
            failed = node_run.failed > 0 or node_run.ok < calls
            lines.append(
                f"| {rate} | {calls} | {node_run.ok} / {node_run.failed} | {node_run.invite_to_200_ms:.1f}"
                f" | {node_run.seconds:.1f} | {app.answered - answered0} / {app.ended - ended0}"
                f" | {base.ok} / {base.failed} | {base.invite_to_200_ms:.1f} |"
            )
            print(lines[-1], flush=True)
            if failed:
                break  # past the ceiling: the calls left ringing would only load the next rate
        lines.append(f"sustained with no failed call: {sustained:g} calls/s")
        lines.append(memory)
    finally:
        uas.terminate()
        uas.wait(5)
        reader.cancel()
        await app.socket.close()
    return lines


def main() -> None:
    server_cpu, load_cpu = cpu_plan()
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})
    sip_port = free_port()
    os.environ.update(
        {
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
        }
    )
    began, noise = time.monotonic(), Noise()
    print(f"# SIP bench: node on CPU {server_cpu}; sipp, app device and Redis on CPU {load_cpu}", flush=True)
    with Cluster(server_cpu) as cluster, tempfile.TemporaryDirectory(prefix="voip-sip-bench-") as tmp:
        node = cluster.start_node("sip")
        lines = asyncio.run(measure(cluster, node, sip_port, Path(tmp)))
    print("\n".join(lines[-2:]))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
