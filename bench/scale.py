"""Scale-out on one machine: calls per second with one node and with two (separate node
processes, one Redis or one Redis Cluster), and what one call set-up costs Redis.

    python -m bench --scale [--quick] [--redis-url URL]      (about 2 min; --quick about 40 s)
    python -m bench --scale --redis-cluster [--quick]        (the same on a local Redis
                                                              Cluster, tests/redis_cluster.py)

1. App-to-app calls/s: closed loop, `callers` WebSocket devices each with one `call.start`
   in flight; a call counts once its `call.started` is back. Callers and callees are spread
   over the nodes (half the calls cross nodes with two); every `call.incoming` must arrive.
   Calls are left ringing (ring timeout 600 s), so a run is set-up work only. With one
   node, the node has a CPU and everything else (this load generator, Redis: every
   redis-server of a cluster) the other; with two, one node per CPU and the rest wherever
   the kernel puts it. CPU per call of each process (/proc/<pid>/stat; "redis" sums a
   cluster's six) says where the time went.
2. Redis per app-to-app call set-up, `calls` calls one after another:
   - round trips, counted inside every node (bench/redis_count.py) two ways: writes (each
     write of a command or a pipeline that the node then waits on; on a cluster one per
     shard), by kind; and waits (replies waited for one after another: writes sent at once
     are one), by piece of work: the set-up's own (CallController.start_call), the
     timeline batches of the delivery log, anything else a wait per write;
   - commands Redis executed, from `INFO commandstats` deltas (commands inside a script
     count too; INFO itself does not), on a cluster summed over its primaries (a replica
     runs its primary's writes again: that is replication, not the nodes' commands);
   each minus the same count over an idle window as long (heartbeats, ring-timeout claims).
3. Full SIP calls/s (sipp UAC: INVITE, 200 from an app that answers over WebSocket, a VoIP
   push per call, ACK, BYE), one sipp per node at an equal share of the rate, rates rising
   until a call fails: the highest rate with none failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from websockets.asyncio.client import ClientConnection

from bench import devices
from bench.noise import Noise
from bench.procs import Cluster, NodeProcess, cpu_seconds
from bench.redis_count import CLAIMS, SET_UP
from bench.redis_count import PATH as ROUND_TRIPS
from bench.sip import AutoAnswer, full_cycles
from tests.ports import free_port
from tests.redis_cluster import LocalCluster
from voip.stores.calls import BUCKETS_PER_TICK

CLAIM = "EVALSHA:claim_timeouts"  # a ring-timeout tick's bucket claim (redis_count.kind_of)

NODE_ENV = {
    # One device makes thousands of calls: the per-socket frame limit guards against a
    # misbehaving app, it is not what is measured (bench/sip.py lifts it too).
    "VOIP_WS_RATE": "1000000",
    "VOIP_WS_BURST": "1000000",
    "SIP_ENABLED": "true",
    "SIP_HOST": "127.0.0.1",
    "SIP_DOMAIN": "bench.test",
    "SIP_RATE": "100000",
    "SIP_BURST": "100000",  # sipp is a single source
    "BENCH_COUNT_ROUND_TRIPS": "1",
}


@dataclass(frozen=True)
class Plan:
    seconds: float = 6.0  # measured, per app-to-app run
    warmup: float = 2.0
    callers: int = 32
    callees: int = 40  # each under max_ringing_per_callee (1000) for a whole run
    calls: int = 500  # counted one after another, for the per-call Redis figures
    sip_rates: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400)  # calls/s over all nodes
    sip_seconds: float = 4.0


QUICK = Plan(seconds=1.5, warmup=0.5, callers=8, callees=8, calls=50, sip_rates=(20,), sip_seconds=1.0)


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {who: sum(cpu_seconds(pid) for pid in group) for who, group in pids.items()}


def _pin(pid: int, cpus: set[int]) -> None:
    with contextlib.suppress(OSError):  # a Redis on another machine, or a single CPU
        os.sched_setaffinity(pid, cpus)


@dataclass
class AppRun:
    nodes: int
    calls: int
    seconds: float
    lost_incoming: int
    cpu_ms: dict[str, float]  # process -> CPU ms in the window

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def cpu_us_per_call(self, who: str) -> float:
        return self.cpu_ms[who] * 1000 / max(self.calls, 1)


@dataclass
class PerCall:
    nodes: int
    calls: int
    round_trips: float  # writes
    commands: float
    # Waits, all of them (the set-up's own, timeline batches, the rest), and the set-up's own.
    waits: float = 0.0
    set_up_waits: float = 0.0
    round_trip_kinds: dict[str, float] = field(default_factory=dict)
    wait_kinds: dict[str, float] = field(default_factory=dict)
    command_kinds: dict[str, float] = field(default_factory=dict)
    # The idle window's ring-timeout claims, over all nodes: their writes and scripts, and
    # the waits of the ticks that claimed.
    claim_round_trips: int = 0
    claim_scripts: int = 0
    claim_waits: int = 0
    claim_ticks: int = 0

    @property
    def claim_round_trips_per_tick(self) -> float:
        """Every tick claims BUCKETS_PER_TICK buckets, a script each: that counts the ticks."""
        return self.claim_round_trips * BUCKETS_PER_TICK / max(self.claim_scripts, 1)

    @property
    def claim_waits_per_tick(self) -> float:
        return self.claim_waits / max(self.claim_ticks, 1)


@dataclass
class Tally:
    """A node's count (bench/redis_count.py), or several nodes' summed."""

    writes: Counter[str] = field(default_factory=Counter)
    waits: Counter[str] = field(default_factory=Counter)
    work: Counter[str] = field(default_factory=Counter)

    def add(self, reply: dict[str, Any]) -> None:
        self.writes.update(reply["kinds"])
        self.waits.update(reply["waits"])
        self.work.update(reply["work"])


@dataclass
class SipRun:
    nodes: int
    sustained: float
    rows: list[str]


# What Redis has executed so far, by command (INFO commandstats; on a cluster, its primaries').
Commands = Callable[[], Counter[str]]


class Rig:
    """Two bench nodes on one Redis or one Redis Cluster; a run uses the first `n` of them."""

    def __init__(self, cluster: Cluster, cpus: tuple[int, int], redis_pids: list[int], commands: Commands) -> None:
        self.cluster = cluster
        self.cpus = cpus  # (first node's CPU, second node's CPU)
        self.redis_pids = redis_pids  # the redis-servers on this machine: measured and placed
        self.commands = commands
        self.nodes: list[NodeProcess] = []
        self.sip_ports: list[int] = []
        self.tag = secrets.token_hex(3)

    def start(self) -> None:
        for index, cpu in enumerate(self.cpus):
            port = free_port()
            self.nodes.append(self.cluster.start_node(f"n{index}", cpu=cpu, env={**NODE_ENV, "SIP_PORT": str(port)}))
            self.sip_ports.append(port)

    def place_load(self, nodes: int) -> None:
        """One node: it has its CPU to itself. Two: one node per CPU, the rest shares."""
        load = {self.cpus[1]} if nodes == 1 else set(self.cpus)
        os.sched_setaffinity(0, load)
        for pid in self.redis_pids:
            _pin(pid, load)

    def processes(self, nodes: int) -> dict[str, list[int]]:
        pids = {f"node {i}": [node.process.pid] for i, node in enumerate(self.nodes[:nodes])}
        pids["load"] = [os.getpid()]
        if self.redis_pids:
            pids["redis"] = self.redis_pids
        return pids


async def _callee(socket: ClientConnection, seen: list[int]) -> None:
    with contextlib.suppress(Exception):
        async for message in socket:
            if '"call.incoming"' in str(message):
                seen[0] += 1


async def _connect_pairs(
    rig: Rig, nodes: int, callers: int, callees: int, tag: str
) -> tuple[list[ClientConnection], list[ClientConnection]]:
    auth = rig.cluster.auth
    urls = [node.ws_url for node in rig.nodes[:nodes]]
    callee_sockets = [await devices.connect(urls[i % nodes], auth, f"e{tag}-{i}", "phone") for i in range(callees)]
    caller_sockets = [await devices.connect(urls[i % nodes], auth, f"c{tag}-{i}", "phone") for i in range(callers)]
    return caller_sockets, callee_sockets


async def _call(socket: ClientConnection, request_id: int, callee: str) -> None:
    await socket.send(f'{{"type":"call.start","id":{request_id},"callee":"{callee}"}}')
    while True:
        message = str(await socket.recv())
        if '"call.started"' in message:
            return
        if '"type":"error"' in message.replace(" ", ""):
            raise RuntimeError(f"call.start refused: {message}")


async def _all_incoming(seen: list[int], expected: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while seen[0] < expected:
        if time.monotonic() >= deadline:
            return  # the caller counts what is missing
        await asyncio.sleep(0.01)


async def app_calls(rig: Rig, nodes: int, plan: Plan) -> AppRun:
    tag = f"{rig.tag}{nodes}"
    callers, callees = await _connect_pairs(rig, nodes, plan.callers, plan.callees, tag)
    seen = [0]
    readers = [asyncio.create_task(_callee(socket, seen)) for socket in callees]
    started = [0]
    stop = asyncio.Event()

    async def caller(k: int, socket: ClientConnection) -> None:
        i = 0
        while not stop.is_set():
            await _call(socket, i, f"e{tag}-{(k + i) % plan.callees}")
            i += 1
            started[0] += 1

    pids = rig.processes(nodes)
    loops = [asyncio.create_task(caller(k, socket)) for k, socket in enumerate(callers)]
    try:
        await asyncio.sleep(plan.warmup)
        calls0, cpu0, t0 = started[0], _cpu(pids), time.perf_counter()
        await asyncio.sleep(plan.seconds)
        calls1, cpu1, t1 = started[0], _cpu(pids), time.perf_counter()
        stop.set()
        await asyncio.gather(*loops)
        await _all_incoming(seen, started[0])
    finally:
        for task in loops:
            task.cancel()
        for socket in callers + callees:
            await socket.close()
        await asyncio.gather(*loops, *readers, return_exceptions=True)
    return AppRun(
        nodes=nodes,
        calls=calls1 - calls0,
        seconds=t1 - t0,
        lost_incoming=started[0] - seen[0],
        cpu_ms={who: (cpu1[who] - cpu0[who]) * 1000 for who in pids},
    )


def _commandstats(client: redis.Redis) -> Counter[str]:
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(values["calls"])
            for name, values in stats.items()
            if name != "cmdstat_info"
        }
    )


def commands_of(clients: list[redis.Redis]) -> Commands:
    """One connection each, kept: a new one would add its own hand-shake's commands."""
    return lambda: sum((_commandstats(client) for client in clients), Counter())


async def _round_trips(http: httpx.AsyncClient, rig: Rig, nodes: int, start: bool) -> Tally:
    total = Tally()
    for node in rig.nodes[:nodes]:
        if start:
            response = await http.post(f"{node.base_url}{ROUND_TRIPS}?on=1")
        else:
            response = await http.get(f"{node.base_url}{ROUND_TRIPS}")
        response.raise_for_status()
        total.add(response.json())
    return total


def _per_call(busy: Counter[str], idle: Counter[str], calls: int) -> dict[str, float]:
    return {kind: (busy[kind] - idle[kind]) / calls for kind in sorted(busy | idle) if busy[kind] != idle[kind]}


async def per_call(rig: Rig, nodes: int, plan: Plan) -> PerCall:
    """Calls one after another, each over once the callee has it: a window with nothing
    but set-ups in it, then an idle window as long for what the nodes do anyway."""
    tag = f"{rig.tag}q{nodes}"
    callers, callees = await _connect_pairs(rig, nodes, nodes, nodes, tag)
    seen = [0]
    readers = [asyncio.create_task(_callee(socket, seen)) for socket in callees]
    windows: list[tuple[Tally, Counter[str]]] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for busy in (True, False):
                await _round_trips(http, rig, nodes, start=True)
                commands0 = rig.commands()
                began = time.perf_counter()
                if busy:
                    for i in range(plan.calls):
                        # Alternating nodes: with two, half the calls cross them.
                        await _call(callers[i % nodes], i, f"e{tag}-{(i + i // nodes) % nodes}")
                        await _all_incoming(seen, i + 1)
                    elapsed = time.perf_counter() - began
                else:
                    await asyncio.sleep(elapsed)
                trips = await _round_trips(http, rig, nodes, start=False)
                windows.append((trips, rig.commands() - commands0))
            for node in rig.nodes[:nodes]:
                (await http.post(f"{node.base_url}{ROUND_TRIPS}?on=0")).raise_for_status()
    finally:
        for socket in callers + callees:
            await socket.close()
        await asyncio.gather(*readers, return_exceptions=True)
    (busy_trips, busy_commands), (idle_trips, idle_commands) = windows
    if seen[0] != plan.calls:
        raise RuntimeError(f"{plan.calls - seen[0]} call.incoming frames never arrived")
    if busy_trips.work[SET_UP] != plan.calls:
        raise RuntimeError(f"{busy_trips.work[SET_UP]} set-ups counted for {plan.calls} calls")
    return PerCall(
        nodes=nodes,
        calls=plan.calls,
        round_trips=(busy_trips.writes.total() - idle_trips.writes.total()) / plan.calls,
        commands=(sum(busy_commands.values()) - sum(idle_commands.values())) / plan.calls,
        waits=(busy_trips.waits.total() - idle_trips.waits.total()) / plan.calls,
        set_up_waits=busy_trips.waits[SET_UP] / plan.calls,
        round_trip_kinds=_per_call(busy_trips.writes, idle_trips.writes, plan.calls),
        wait_kinds=_per_call(busy_trips.waits, idle_trips.waits, plan.calls),
        command_kinds=_per_call(busy_commands, idle_commands, plan.calls),
        claim_round_trips=sum(n for kind, n in idle_trips.writes.items() if CLAIM in kind),
        claim_scripts=sum(n * kind.count(CLAIM) for kind, n in idle_trips.writes.items()),
        claim_waits=idle_trips.waits[CLAIMS],
        claim_ticks=idle_trips.work[CLAIMS],
    )


async def sip_calls(rig: Rig, nodes: int, plan: Plan, work: Path) -> SipRun:
    """alice-<i>'s app on node i answers the calls sipp makes to node i."""
    apps: list[AutoAnswer] = []
    users = [f"alice-{rig.tag}-{nodes}-{i}" for i in range(nodes)]
    for user, node in zip(users, rig.nodes[:nodes], strict=True):
        await devices.register(node.base_url, rig.cluster.auth, user, f"{user}-app")
        apps.append(AutoAnswer(await devices.connect(node.ws_url, rig.cluster.auth, user, f"{user}-app")))
    readers = [asyncio.create_task(app.run()) for app in apps]
    rows: list[str] = []
    sustained = 0.0
    try:
        for rate in plan.sip_rates:
            share = rate / nodes
            calls = max(1, int(share * plan.sip_seconds))
            runs = await asyncio.gather(
                *(
                    full_cycles(f"127.0.0.1:{rig.sip_ports[i]}", share, calls, work / f"{nodes}-{rate}-{i}", users[i])
                    for i in range(nodes)
                )
            )
            ok, failed = sum(run.ok for run in runs), sum(run.failed for run in runs)
            invite_ms = sum(run.invite_to_200_ms * run.ok for run in runs) / max(ok, 1)
            rows.append(f"| {nodes} | {rate} | {calls * nodes} | {ok} / {failed} | {invite_ms:.1f} |")
            print(rows[-1], flush=True)
            if failed or ok < calls * nodes:
                break
            sustained = rate
            await asyncio.sleep(0.5)
    finally:
        for app in apps:
            await app.socket.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return SipRun(nodes=nodes, sustained=sustained, rows=rows)


@dataclass
class Report:
    app: list[AppRun]
    counts: list[PerCall]
    sip: list[SipRun]
    redis: str = "one Redis"  # or "Redis Cluster, 3 primaries + 3 replicas"

    def lines(self) -> list[str]:
        lines = [f"## app-to-app call set-ups per second on {self.redis} (closed loop; CPU µs per call by process)"]
        who = sorted({name for run in self.app for name in run.cpu_ms})
        lines.append(f"{'nodes':>5}{'calls':>8}{'calls/s':>9}{'lost':>6}" + "".join(f"{w:>9}" for w in who))
        for run in self.app:
            lines.append(
                f"{run.nodes:>5}{run.calls:>8}{run.rate:>9.0f}{run.lost_incoming:>6}"
                + "".join(f"{run.cpu_us_per_call(w):>9.0f}" if w in run.cpu_ms else f"{'-':>9}" for w in who)
            )
        if len(self.app) == 2:
            lines.append(f"2 nodes / 1 node: {self.app[1].rate / self.app[0].rate:.2f} (goal >= 1.6)")
        lines.append(f"## Redis per app-to-app call set-up on {self.redis} (minus an idle window as long)")
        for count in self.counts:
            lines.append(
                f"{count.nodes} node(s), {count.calls} calls: {count.set_up_waits:.2f} waits in the set-up"
                f" (goal <= 3); {count.waits:.2f} waits and {count.round_trips:.2f} writes in all,"
                f" {count.commands:.2f} commands executed"
            )
            lines += [f"  wait        {kind:<52}{n:6.2f}" for kind, n in count.wait_kinds.items()]
            lines += [f"  write       {kind:<52}{n:6.2f}" for kind, n in count.round_trip_kinds.items()]
            lines += [f"  command     {kind:<52}{n:6.2f}" for kind, n in count.command_kinds.items()]
            lines.append(
                f"  ring-timeout claims in the idle window: {count.claim_scripts} scripts in"
                f" {count.claim_round_trips} writes, {count.claim_round_trips_per_tick:.2f} writes and"
                f" {count.claim_waits_per_tick:.2f} waits per tick of {BUCKETS_PER_TICK} claims"
            )
        if not self.sip:
            return lines
        lines.append(
            f"## full SIP calls on {self.redis} (sipp UAC -> node -> app answers; a push each), one sipp per node"
        )
        lines.append("| nodes | rate (calls/s) | calls | ok / failed | INVITE->200 avg ms |")
        lines.append("| ---: | ---: | ---: | ---: | ---: |")
        for sip in self.sip:
            lines += sip.rows
        lines += [f"sustained with no failed call, {sip.nodes} node(s): {sip.sustained:g} calls/s" for sip in self.sip]
        return lines


async def measure(rig: Rig, plan: Plan, work: Path, *, redis_name: str = "one Redis") -> Report:
    report = Report([], [], [], redis_name)
    for nodes in (1, 2):
        rig.place_load(nodes)
        report.app.append(await app_calls(rig, nodes, plan))
        print(f"# app-to-app, {nodes} node(s): {report.app[-1].rate:.0f} calls/s", flush=True)
    rig.place_load(2)
    for nodes in (1, 2):
        report.counts.append(await per_call(rig, nodes, plan))
    for nodes in (1, 2):
        rig.place_load(nodes)
        report.sip.append(await sip_calls(rig, nodes, plan, work))
    return report


def _redis_pid(url: str) -> int | None:
    """Redis's pid when it runs on this machine (its CPU is then measured and placed)."""
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return (
        pid
        if Path(f"/proc/{pid}").exists() and url.startswith(("unix:", "redis://127.", "redis://localhost"))
        else None
    )


def run(plan: Plan, redis_url: str = "", *, redis_cluster: bool = False) -> Report:
    """On `redis_url` (default REDIS_URL, else a private Redis), or with `redis_cluster` on a
    local Redis Cluster of six redis-servers."""
    cpus = sorted(os.sched_getaffinity(0))
    pair = (cpus[-1], cpus[0]) if len(cpus) > 1 else (cpus[0], cpus[0])
    os.sched_setaffinity(0, {pair[1]})  # a private Redis or cluster starts on the load generator's CPU
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(LocalCluster()) if redis_cluster else None
        cluster = stack.enter_context(
            Cluster(pair[0], redis_url=redis_url, redis_cluster_nodes=local.startup_nodes if local else "")
        )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="voip-scale-")))
        if local is not None:
            primaries = [primary.client() for primary in local.live_primaries()]
            for client in primaries:
                stack.callback(client.close)
            pids = [node.process.pid for node in local.nodes if node.process is not None]
            rig = Rig(cluster, pair, pids, commands_of(primaries))
            redis_name = (
                f"Redis Cluster, {local.primaries} primaries + {local.primaries * local.replicas_per_primary} replicas"
            )
        else:
            client = stack.enter_context(redis.Redis.from_url(cluster.redis_url))
            pid = _redis_pid(cluster.redis_url)
            rig = Rig(cluster, pair, [pid] if pid is not None else [], commands_of([client]))
            redis_name = "one Redis"
        rig.start()
        try:
            return asyncio.run(measure(rig, plan, tmp, redis_name=redis_name))
        except Exception:
            for node in rig.nodes:  # what the nodes said, before their logs go with the run
                lines = node.log_path.read_text().splitlines()
                errors = [line for line in lines if '"level": "error"' in line or '"level": "warning"' in line]
                print(
                    f"# {node.node_id}: last warnings and errors of {len(errors)}",
                    *errors[-20:],
                    sep="\n",
                    file=sys.stderr,
                )
            raise


def main(quick: bool = False, redis_url: str = "", redis_cluster: bool = False) -> None:
    began, noise = time.monotonic(), Noise()
    where = "a local Redis Cluster" if redis_cluster else redis_url or os.environ.get("REDIS_URL") or "private"
    print(f"# scale bench: {os.cpu_count()} CPUs; Redis {where}", flush=True)
    report = run(QUICK if quick else Plan(), redis_url, redis_cluster=redis_cluster)
    print("\n".join(report.lines()))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
