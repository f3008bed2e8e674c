"""Part 1: `GET /v1/calls/{id}/status` throughput against a bare route of the same app.

`python -m bench --status` runs this part alone: on `--redis-url` (a `rediss://` one
included; default REDIS_URL, else a private redis-server), where the status script goes
through the node's own pipe (voip/redis_pipe.py), or with `--redis-cluster` on a local
Redis Cluster (tests/redis_cluster.py), with two nodes measured in the same rounds: one
with the cluster pipe (voip/redis_cluster_pipe.py), as a node runs there, and one whose
status script goes through redis-py's cluster client (`BENCH_STATUS_PIPE=0`), each
against its own bare route.

Unpinned by default (issue 12's row: node, wrk and Redis free to run on any CPU, as a
node runs in production); `--pinned` puts the node on one CPU and wrk and Redis on the
other, as `python -m bench` does."""

from __future__ import annotations

import asyncio
import dataclasses
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
# Issue 12: the status endpoint at >= 0.6 of a bare route served by the same app, unpinned.
GOAL = 0.6
# The CPUs this process may use when it starts: unpinned runs give them all back (another
# part of a run may have pinned the process meanwhile).
ALL_CPUS = frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Workload:
    name: str
    paths: list[str]
    headers: dict[str, str]
    node: NodeProcess | None = None  # None: the node `measure` is given
    baseline: str = "bare"  # the workload its ratio is to


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


def workloads(
    cluster: Cluster, call_ids: list[str], *, node: NodeProcess | None = None, tag: str = ""
) -> list[Workload]:
    """The bare route and the status endpoint (bearer, capability) on `node`; `tag`
    names them apart from another node's, whose bare route is its own baseline."""
    auth = cluster.auth
    expires = int(time.time()) + 3600
    status = [f"/v1/calls/{c}/status?device_id={CALLEE_DEVICE}" for c in call_ids]
    prefix = f"{tag} " if tag else ""
    bare = f"{prefix}bare"
    return [
        Workload(bare, [BARE_PATH], {}, node, bare),
        Workload(
            f"{prefix}status+bearer", status, {"Authorization": f"Bearer {auth.mint(CALLEE, 'device')}"}, node, bare
        ),
        Workload(
            f"{prefix}status+cap",
            [f"{p}&cap={auth.capability(c, CALLEE_DEVICE, expires)}" for p, c in zip(status, call_ids, strict=True)],
            {},
            node,
            bare,
        ),
    ]


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    node: NodeProcess, loads: list[Workload], *, rounds: int, seconds: float, warmup: float, connections: int
) -> dict[str, list[LoadResult]]:
    """Interleaved rounds, so that drift on the machine hits every workload alike; each
    run also with the CPU its node used, which other processes on the machine hardly change."""
    for load in loads:
        url = (load.node or node).base_url
        run_wrk(url, load.paths, connections=connections, seconds=warmup, headers=load.headers)
    results: dict[str, list[LoadResult]] = {load.name: [] for load in loads}
    for _ in range(rounds):
        for load in loads:
            server = load.node or node
            before = cpu_seconds(server.process.pid)
            result = run_wrk(
                server.base_url, load.paths, connections=connections, seconds=seconds, headers=load.headers
            )
            result = dataclasses.replace(result, server_cpu_s=cpu_seconds(server.process.pid) - before)
            if result.errors:
                raise RuntimeError(f"{load.name}: {result.errors} failed requests of {result.requests}")
            results[load.name].append(result)
    return results


def report(
    results: dict[str, list[LoadResult]],
    connections: int,
    seconds: float,
    loads: list[Workload] | None = None,
    *,
    pinned: bool = True,
) -> list[str]:
    """One line a workload: its median req/s and the ratio to its baseline's ("bare",
    unless `loads` names another); then the node's CPU per request, and the same ratio from
    it (what a node alone on its CPU would reach: other processes move req/s far more)."""
    baselines = {load.name: load.baseline for load in loads or []}
    width = max(16, *(len(name) + 2 for name in results))
    lines = [
        f"## status endpoint vs bare route (wrk -t1 -c{connections}, {seconds:.0f}s"
        f" x {len(next(iter(results.values())))} rounds, median)",
        f"{'route':<{width}}{'req/s':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/req':>12}{'CPU ratio':>11}   rounds req/s",
    ]
    for name, runs in results.items():
        rps = median([r.rps for r in runs])
        baseline = results[baselines.get(name, "bare")]
        cpu, bare_cpu = cpu_per_request(runs), cpu_per_request(baseline)
        lines.append(
            f"{name:<{width}}{rps:>10.0f}{ratio(rps, median([r.rps for r in baseline])):>8.2f}"
            f"{median([r.p50_ms for r in runs]):>9.2f}{median([r.p99_ms for r in runs]):>9.2f}"
            f"{cpu:>12.0f}{ratio(bare_cpu, cpu):>11.2f}"
            f"   {' '.join(f'{r.rps:.0f}' for r in runs)}"
        )
    if pinned:
        lines.append("target: status req/s >= 0.50 x bare")
    else:
        lines += goal_lines(results, baselines)
    return lines


def ratios(results: dict[str, list[LoadResult]], name: str, baseline: str = "bare") -> tuple[float, float]:
    """(from req/s, from the node's CPU per request) of `name` against `baseline`."""
    runs, base = results[name], results[baseline]
    return (
        ratio(median([r.rps for r in runs]), median([r.rps for r in base])),
        ratio(cpu_per_request(base), cpu_per_request(runs)),
    )


def goal_lines(results: dict[str, list[LoadResult]], baselines: dict[str, str]) -> list[str]:
    lines = []
    for name in results:
        baseline = baselines.get(name, "bare")
        if name == baseline:
            continue
        by_rps, by_cpu = ratios(results, name, baseline)
        met = "met" if min(by_rps, by_cpu) >= GOAL else "MISSED"
        lines.append(
            f"goal (issue 12): {name} >= {GOAL:.2f} x {baseline}, unpinned: {met} "
            f"({by_rps:.2f} from req/s, {by_cpu:.2f} from node CPU per request)"
        )
    return lines


def cpu_per_request(runs: list[LoadResult]) -> float:
    """Microseconds of the node's CPU per request, over all the runs."""
    requests = sum(r.requests for r in runs)
    return sum(r.server_cpu_s for r in runs) / requests * 1e6 if requests else float("nan")


def placement(pinned: bool) -> tuple[int, int]:
    """(node CPU, load CPU), -1 for none; this process, hence Redis and wrk, goes to the
    load CPU, or back to every CPU it started with."""
    from bench.procs import cpu_plan

    server_cpu, load_cpu = cpu_plan() if pinned else (-1, -1)
    os.sched_setaffinity(0, {load_cpu} if load_cpu >= 0 else ALL_CPUS)
    return server_cpu, load_cpu


def describe(server_cpu: int, load_cpu: int) -> str:
    if server_cpu < 0:
        return f"node, wrk and Redis unpinned (any of CPUs {','.join(map(str, sorted(ALL_CPUS)))})"
    return f"nodes on CPU {server_cpu}, load and Redis on CPU {load_cpu}"


def main(
    *,
    quick: bool,
    redis_url: str,
    redis_cluster: bool,
    pinned: bool = False,
    connections: int = 32,
    calls: int = 4,
) -> None:
    from bench.http_load import wrk_binary
    from bench.noise import Noise

    wrk_binary()  # fail before starting anything
    server_cpu, load_cpu = placement(pinned)
    rounds, seconds, warmup = (1, 3.0, 1.0) if quick else (3, 6.0, 2.0)
    noise = Noise()
    cluster_nodes = None
    if redis_cluster:
        from tests.redis_cluster import LocalCluster

        cluster_nodes = LocalCluster().start()
    try:
        startup_nodes = cluster_nodes.startup_nodes if cluster_nodes else ""
        with Cluster(server_cpu, redis_url=redis_url, redis_cluster_nodes=startup_nodes) as cluster:
            where = describe(server_cpu, load_cpu)
            if cluster_nodes:
                node = cluster.start_node("pipe")
                # A second node reads the same calls; it idles while the first is measured.
                client = cluster.start_node("client", env={"BENCH_STATUS_PIPE": "0"})
                print(
                    "# status endpoint on a Redis Cluster (3 primaries, 3 replicas): 'pipe' through the cluster"
                    " pipe, 'client' through redis-py's cluster client, each against its own node's bare route;"
                    f" {where}"
                )
                call_ids = asyncio.run(make_calls(cluster, node, calls))
                loads = [
                    *workloads(cluster, call_ids, node=node, tag="pipe"),
                    *workloads(cluster, call_ids, node=client, tag="client"),
                ]
            else:
                node = cluster.start_node("a")
                print(f"# status endpoint on {cluster.redis_url.split('?')[0]}, the pipe; {where}")
                call_ids = asyncio.run(make_calls(cluster, node, calls))
                loads = workloads(cluster, call_ids)
            results = measure(node, loads, rounds=rounds, seconds=seconds, warmup=warmup, connections=connections)
            print("\n".join(report(results, connections, seconds, loads, pinned=pinned)), flush=True)
    finally:
        if cluster_nodes is not None:
            cluster_nodes.stop()
    print(noise.report())
