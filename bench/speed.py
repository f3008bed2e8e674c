"""`python -m bench --speed [--quick]`: issue 12's table, every row measured in one run.

Each row's figure is a ratio or a per-call cost against a baseline measured in the same
run (docs/benchmarks.md#issue-12-one-table-python--m-bench---speed). A row is a
`measure(plan) -> Measured` function: the push and status rows call into bench/push.py
and bench/status.py, the SIP call row into bench/sip.py, the app-to-app call row into
bench/app_calls.py, the idle-socket row into bench/sockets.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench import app_calls, push, sip, sockets, status
from bench.noise import Noise
from bench.procs import Cluster, cpu_plan
from bench.stats import ratio


@dataclass(frozen=True)
class Plan:
    push_rounds: int
    push_seconds: float
    push_warmup: float
    status_rounds: int
    status_seconds: float
    status_warmup: float
    sip_rates: tuple[float, ...] = sip.QUICK_RATES  # the ladder of calls/s, up to the first failed call
    app_calls: app_calls.Plan = app_calls.QUICK
    sockets: int = sockets.QUICK_SOCKETS


FULL = Plan(
    push_rounds=5,
    push_seconds=1.2,
    push_warmup=0.5,
    status_rounds=3,
    status_seconds=6,
    status_warmup=2,
    sip_rates=sip.RATES,
    app_calls=app_calls.FULL,
    sockets=sockets.SOCKETS,
)
QUICK = Plan(
    push_rounds=2,
    push_seconds=0.7,
    push_warmup=0.2,
    status_rounds=1,
    status_seconds=3,
    status_warmup=1,
    sip_rates=sip.QUICK_RATES,
    app_calls=app_calls.QUICK,
    sockets=sockets.QUICK_SOCKETS,
)

PUSH_IN_FLIGHT = 100
PUSH_GOAL = 0.9  # x the bare h2 client's pushes per CPU-second


@dataclass(frozen=True)
class Measured:
    value: str  # the table's "measured" cell
    met: bool | None = None  # None: not measured, or no goal to meet
    lines: tuple[str, ...] = ()  # the measurement's own report, printed before the table


NOT_MEASURED = Measured("not measured in this run")  # a row whose measurement could not run


@dataclass(frozen=True)
class Row:
    work: str
    today: str
    goal: str
    measure: Callable[[Plan], Awaitable[Measured]]


# Placeholders, each to be pointed at the bench function of its row (node CPU per unit of
# work against its baseline in the same run); until then they measure nothing.


async def measure_sip_call(plan: Plan) -> Measured:
    """A full SIP call with a push under sipp (bench/sip.py, its ladder of rates up to the
    first failed call, no memory run): node CPU per call over the rates sustained with no
    failed call, against a sipp UAS's at the same rates in this run."""
    result = await sip.run(rates=plan.sip_rates, memory=False)
    return sip_verdict(result.rows, tuple(result.lines))


def sip_verdict(rows: list[sip.RateRow], lines: tuple[str, ...] = ()) -> Measured:
    verdict = sip.Verdict.of(rows)
    if not verdict.node_ms:
        return Measured(f"no rate sustained (ladder {', '.join(f'{r.node.rate:g}' for r in rows)})", False, lines)
    node, uas = verdict.node_median, verdict.uas_median
    value = (
        f"{node:.2f} ms/call ({ratio(node, uas):.0f} x sipp UAS's {uas:.3f} ms), "
        f"{verdict.best_rate:g} calls/s with no failed call"
    )
    return Measured(value, verdict.met, lines)


async def measure_app_call(plan: Plan) -> Measured:
    """An app-to-app call over WebSocket (bench/app_calls.py): node CPU per call, against the
    same node echoing a call's frames over bare WebSockets in the same run."""
    result = await app_calls.run(plan.app_calls)
    return app_call_verdict(result)


def app_call_verdict(result: app_calls.Result) -> Measured:
    value = f"{result.call_ms:.2f} ms/call ({ratio(result.call_ms, result.echo_ms):.1f} x a bare echo of its frames)"
    return Measured(value, result.met, tuple(result.lines()))


async def measure_idle_sockets(plan: Plan) -> Measured:
    """Node memory per idle device WebSocket at 10,000 per node (2,000 with --quick), opened
    in a storm with no error, against the same node before the storm (bench/sockets.py)."""
    return idle_sockets_verdict(await sockets.run(plan.sockets))


def idle_sockets_verdict(storm: sockets.Storm) -> Measured:
    value = f"{storm.kib_per_socket:.1f} KiB at {storm.connected:,} sockets, {storm.error_count} errors in the storm"
    return Measured(value, storm.met, tuple(storm.lines()))


async def measure_push(plan: Plan) -> Measured:
    """APNsNotifier.send against the bare h2 client, 100 in flight, one warm connection
    each, interleaved rounds (bench/push.py, part 1): client CPU per push, and pushes/s."""
    server_cpu, load_cpu = cpu_plan()
    sim = push.SimProcess(load_cpu)
    try:
        if server_cpu >= 0:
            os.sched_setaffinity(0, {server_cpu})  # the clients get a CPU; the simulator has the other
        shape = push.Plan(
            rounds=plan.push_rounds,
            seconds=plan.push_seconds,
            warmup=plan.push_warmup,
            concurrency=(PUSH_IN_FLIGHT,),
            rates=(),
        )
        rounds = await push.throughput(sim, shape)
    finally:
        sim.stop()
    ours, ours_cpu = push.summary(rounds, "APNsNotifier.send", PUSH_IN_FLIGHT)
    bare, bare_cpu = push.summary(rounds, "bare h2", PUSH_IN_FLIGHT)
    # The table's unit is CPU per unit of work: pushes per CPU-second against the bare
    # client's. Pushes/s, shown too, is the simulator's ceiling and the machine's noise.
    by_cpu = ratio(bare_cpu, ours_cpu)
    value = (
        f"{by_cpu:.2f} x bare h2 by CPU per push ({ours_cpu:.0f} against {bare_cpu:.0f} us), "
        f"{ratio(ours.rate, bare.rate):.2f} x by pushes/s"
    )
    return Measured(value, by_cpu >= PUSH_GOAL, tuple(push.throughput_report(rounds, shape)))


async def measure_status(plan: Plan) -> Measured:
    """The status endpoint against a bare route of the same app, node, wrk and Redis
    unpinned (bench/status.py): req/s and node CPU per request."""
    server_cpu, _ = status.placement(pinned=False)
    connections = 32
    with Cluster(server_cpu) as cluster:
        node = cluster.start_node("status")
        call_ids = await status.make_calls(cluster, node, 4)
        loads = status.workloads(cluster, call_ids)
        results = await asyncio.to_thread(
            status.measure,
            node,
            loads,
            rounds=plan.status_rounds,
            seconds=plan.status_seconds,
            warmup=plan.status_warmup,
            connections=connections,
        )
    cells, met = [], True
    for name in ("status+bearer", "status+cap"):
        by_rps, by_cpu = status.ratios(results, name)
        met = met and min(by_rps, by_cpu) >= status.GOAL
        cells.append(f"{name.removeprefix('status+')} {by_rps:.2f} (req/s), {by_cpu:.2f} (CPU)")
    value = f"{'; '.join(cells)} x bare"
    return Measured(value, met, tuple(status.report(results, connections, plan.status_seconds, loads, pinned=False)))


ROWS = (
    Row("full SIP call with a push", "~13 ms", "<= 4 ms (>= 250 calls/s per core), no failed call", measure_sip_call),
    Row("app-to-app call", "3.6 ms", "<= 2 ms", measure_app_call),
    Row("idle device WebSocket, 10,000 per node", "35.6 KiB", "<= 24 KiB, 10,000 in a storm", measure_idle_sockets),
    Row(f"push sent, {PUSH_IN_FLIGHT} in flight", "1.0 x bare h2 client", f">= {PUSH_GOAL} x", measure_push),
    Row("status endpoint", "0.42-0.63 x bare", f">= {status.GOAL} x bare of the same app, unpinned", measure_status),
)


def table(rows: list[tuple[Row, Measured]]) -> list[str]:
    def verdict(measured: Measured) -> str:
        return "" if measured.met is None else " (met)" if measured.met else " (MISSED)"

    return [
        "## issue 12: node CPU per unit of work, each against its baseline in this run",
        "| work | today | goal | measured |",
        "|---|---|---|---|",
        *(f"| {row.work} | {row.today} | {row.goal} | {m.value}{verdict(m)} |" for row, m in rows),
    ]


async def run(plan: Plan, rows: tuple[Row, ...] = ROWS) -> list[tuple[Row, Measured]]:
    measured = []
    for row in rows:
        began = time.monotonic()
        result = await row.measure(plan)
        if result.lines:
            print(f"### {row.work} ({time.monotonic() - began:.0f}s)", *result.lines, sep="\n", flush=True)
        measured.append((row, result))
    return measured


def main(*, quick: bool = False) -> None:
    from bench.__main__ import machine
    from bench.http_load import wrk_binary

    wrk_binary()  # fail before starting anything
    plan = QUICK if quick else FULL
    began, noise = time.monotonic(), Noise()
    print(f"# voip bench --speed: {machine()}", flush=True)
    rows = push._run(run(plan))
    print("\n".join(table(rows)))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
