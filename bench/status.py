"""Part 1: `GET /v1/calls/{id}/status` throughput against a bare route of the same app."""

from __future__ import annotations

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
            [f"{p}&cap={auth.capability(c, CALLEE_DEVICE, expires)}" for p, c in zip(status, call_ids)],
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
        f"## status endpoint vs bare route (wrk -t1 -c{connections}, {seconds:.0f}s x {len(results['bare'])} rounds, median)",
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
