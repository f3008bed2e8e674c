"""Two versions of the node side by side under sipp: node CPU per full SIP call of each,
in the same rounds, on the same CPU, at the same moments.

    python -m bench --sip-pair OTHER [OTHER ...] [--rates 20] [--seconds 10] [--rounds 6]
        OTHER: the root of another checkout (`git worktree add /tmp/before main`, or
        `git archive <commit> | tar -x -C /tmp/before`); this checkout's node is the first

On a machine that other work keeps busy, a node's CPU per call moves by 20% from one
minute to the next (caches, batching when starved); two runs one after the other cannot
tell a 5% change. Here every node runs a round at once, each with its own sipp, app
device and Redis, all nodes on one CPU and the rest on the other, so whatever the
machine does, it does to all of them: the ratio to the first node is what to read.
Each node is `python -m bench.server` started from its own checkout. One APNs simulator
(bench/apns_sim.py) answers every node's pushes. Put this checkout twice (`.`) to see
the noise of the ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import devices
from bench.noise import Noise
from bench.procs import ROOT, Cluster, NodeProcess, cpu_plan, cpu_seconds
from bench.push import SimProcess
from bench.sip import AutoAnswer, full_cycles
from tests.ports import free_port

WARM_CALLS = 100


@dataclass
class Variant:
    label: str
    root: Path
    cluster: Cluster | None = None
    node: NodeProcess | None = None
    target: str = ""
    app: AutoAnswer | None = None
    cpu_ms: list[float] = field(default_factory=list)


async def measure(variants: list[Variant], sim: SimProcess, rate: float, seconds: float, rounds: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="voip-pair-sipp-"))
    for variant in variants:
        assert variant.cluster is not None
        port = free_port()
        env = {
            **sim.settings(),
            "SIP_ENABLED": "true",
            "SIP_HOST": "127.0.0.1",
            "SIP_PORT": str(port),
            "SIP_DOMAIN": "bench.test",
            "SIP_RATE": "100000",
            "SIP_BURST": "100000",
            "VOIP_WS_RATE": "100000",
            "VOIP_WS_BURST": "100000",
        }
        variant.node = variant.cluster.start_node(variant.label, env=env, root=variant.root)
        await devices.register(variant.node.base_url, variant.cluster.auth, "alice", "alice-app")
        variant.app = AutoAnswer(await devices.connect(variant.node.ws_url, variant.cluster.auth, "alice", "alice-app"))
        variant.target = f"127.0.0.1:{port}"
    readers = [asyncio.create_task(v.app.run()) for v in variants if v.app is not None]
    try:
        await asyncio.gather(
            *(full_cycles(v.target, 50, WARM_CALLS, work / f"warm-{i}") for i, v in enumerate(variants))
        )
        calls = int(rate * seconds)
        lines = [f"## node CPU per full SIP call, {len(variants)} nodes side by side, {rate:g} calls/s each"]
        for round_ in range(rounds):
            before = [cpu_seconds(v.node.process.pid) for v in variants if v.node is not None]
            runs = await asyncio.gather(
                *(full_cycles(v.target, rate, calls, work / f"r{round_}-{i}") for i, v in enumerate(variants))
            )
            await asyncio.sleep(0.5)  # the last calls' timeline batches
            after = [cpu_seconds(v.node.process.pid) for v in variants if v.node is not None]
            cells = []
            for variant, start, end, run in zip(variants, before, after, runs, strict=True):
                variant.cpu_ms.append((end - start) * 1000 / calls)
                cells.append(f"{variant.label} {variant.cpu_ms[-1]:.2f} ms ({run.ok} ok, {run.failed} failed)")
            lines.append(f"round {round_ + 1}: " + "; ".join(cells))
            print(lines[-1], flush=True)
        first = variants[0]
        for variant in variants:
            ratios = [mine / theirs for mine, theirs in zip(variant.cpu_ms, first.cpu_ms, strict=True)]
            lines.append(
                f"{variant.label}: median {statistics.median(variant.cpu_ms):.2f} ms per call"
                f" ({min(variant.cpu_ms):.2f}-{max(variant.cpu_ms):.2f}); x {first.label}:"
                f" median {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )
        return lines
    finally:
        for variant in variants:
            if variant.app is not None:
                await variant.app.socket.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


def main(others: list[str], *, rate: float = 20, seconds: float = 10, rounds: int = 6) -> None:
    server_cpu, load_cpu = cpu_plan()
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})
    variants = [Variant("this", ROOT)]
    for i, other in enumerate(others):
        root = Path(other).resolve()
        if not (root / "bench" / "server.py").exists():
            raise SystemExit(f"{other}: not a checkout of this project (no bench/server.py)")
        variants.append(Variant(f"{root.name}#{i + 1}", root))
    began, noise = time.monotonic(), Noise()
    print(f"# SIP pair bench: nodes on CPU {server_cpu}; sipp, app devices, Redis and simulator on CPU {load_cpu}")
    sim = SimProcess(load_cpu)
    try:
        for variant in variants:
            variant.cluster = Cluster(server_cpu).__enter__()
        lines = asyncio.run(measure(variants, sim, rate, seconds, rounds))
    finally:
        for variant in variants:
            if variant.cluster is not None:
                variant.cluster.__exit__(None, None, None)
        sim.stop()
    print("\n".join(line for line in lines if not line.startswith("round")))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
