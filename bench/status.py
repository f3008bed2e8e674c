"""Part 1: `GET /v1/calls/{id}/status` throughput against a bare route of the same app.

`python -m bench --status` runs this part alone: on `--redis-url` (a `rediss://` one
included; default REDIS_URL, else a private redis-server), where the status script goes
through the node's own pipe (voip/redis_pipe.py), or with `--redis-cluster` on a local
Redis Cluster (tests/redis_cluster.py), where it goes through redis-py's cluster client."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass

from bench import devices
from bench.http_load import LoadResult, run_wrk
from bench.procs import Cluster, NodeProcess
from bench.server import BARE_PATH
from bench.stats import median, ratio

CALLEE, CALLEE_DEVICE = "bob", "bob-phone"


@dataclass(frozen=True)
class Workload:
    name: str
    paths: list[str]
    headers: dict[str, str]


async def make_calls(cluster: Cluster, node: NodeProcess, count: int) -> list[str]:
    """Ringing calls to one callee with a registered device, as after a VoIP push."""
    auth = cluster.auth
    await devices.register(node.base_url, auth, CALLEE, CALLEE_DEVICE)
    callee = await devices.connect(node.ws_url, auth, CALLEE, CALLEE_DEVICE)
    call_ids = []
    for n in range(count):
        caller = await devices.connect(node.ws_url, auth, f"alice{n}", "alice-phone")
        call_id = str(uuid.uuid4())
        reply = await devices.request(caller, {"type": "call.start", "id": 1, "callee": CALLEE, "call_id": call_id})
        if reply.get("type") != "call.started" or reply.get("state") != "ringing":
            raise RuntimeError(f"call.start failed: {reply}")
        call_ids.append(call_id)
        await caller.close()
    await callee.close()
    return call_ids


def workloads(cluster: Cluster, call_ids: list[str]) -> list[Workload]:
    auth = cluster.auth
    expires = int(time.time()) + 3600
    status = [f"/v1/calls/{c}/status?device_id={CALLEE_DEVICE}" for c in call_ids]
    return [
        Workload("bare", [BARE_PATH], {}),
        Workload("status+bearer", status, {"Authorization": f"Bearer {auth.mint(CALLEE, 'device')}"}),
        Workload(
            "status+cap",
            [f"{p}&cap={auth.capability(c, CALLEE_DEVICE, expires)}" for p, c in zip(status, call_ids, strict=True)],
            {},
        ),
    ]


def measure(
    node: NodeProcess, loads: list[Workload], *, rounds: int, seconds: float, warmup: float, connections: int
) -> dict[str, list[LoadResult]]:
    """Interleaved rounds, so that drift on the machine hits every workload alike."""
    for load in loads:
        run_wrk(node.base_url, load.paths, connections=connections, seconds=warmup, headers=load.headers)
    results: dict[str, list[LoadResult]] = {load.name: [] for load in loads}
    for _ in range(rounds):
        for load in loads:
            result = run_wrk(node.base_url, load.paths, connections=connections, seconds=seconds, headers=load.headers)
            if result.errors:
                raise RuntimeError(f"{load.name}: {result.errors} failed requests of {result.requests}")
            results[load.name].append(result)
    return results


def report(results: dict[str, list[LoadResult]], connections: int, seconds: float) -> list[str]:
    bare = median([r.rps for r in results["bare"]])
    lines = [
        f"## status endpoint vs bare route (wrk -t1 -c{connections}, {seconds:.0f}s"
        f" x {len(results['bare'])} rounds, median)",
        f"{'route':<16}{'req/s':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}   rounds req/s",
    ]
    for name, runs in results.items():
        rps = median([r.rps for r in runs])
        lines.append(
            f"{name:<16}{rps:>10.0f}{ratio(rps, bare):>8.2f}"
            f"{median([r.p50_ms for r in runs]):>9.2f}{median([r.p99_ms for r in runs]):>9.2f}"
            f"   {' '.join(f'{r.rps:.0f}' for r in runs)}"
        )
    lines.append("target: status req/s >= 0.50 x bare")
    return lines


def main(*, quick: bool, redis_url: str, redis_cluster: bool, connections: int = 32, calls: int = 4) -> None:
    from bench.http_load import wrk_binary
    from bench.noise import Noise
    from bench.procs import cpu_plan

    wrk_binary()  # fail before starting anything
    server_cpu, load_cpu = cpu_plan()
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})  # Redis and wrk inherit it; the node takes the other
    rounds, seconds, warmup = (1, 3.0, 1.0) if quick else (3, 6.0, 2.0)
    noise = Noise()
    cluster_nodes = None
    if redis_cluster:
        from tests.redis_cluster import LocalCluster

        cluster_nodes = LocalCluster().start()
    try:
        startup_nodes = cluster_nodes.startup_nodes if cluster_nodes else ""
        with Cluster(server_cpu, redis_url=redis_url, redis_cluster_nodes=startup_nodes) as cluster:
            node = cluster.start_node("a")
            where = cluster.redis_url.split("?")[0]
            path = "Redis Cluster, redis-py's cluster client" if cluster_nodes else f"{where}, the pipe"
            print(f"# status endpoint on {path}; node on CPU {server_cpu}, load and Redis on CPU {load_cpu}")
            call_ids = asyncio.run(make_calls(cluster, node, calls))
            results = measure(
                node,
                workloads(cluster, call_ids),
                rounds=rounds,
                seconds=seconds,
                warmup=warmup,
                connections=connections,
            )
            print("\n".join(report(results, connections, seconds)), flush=True)
    finally:
        if cluster_nodes is not None:
            cluster_nodes.stop()
    print(noise.report())
