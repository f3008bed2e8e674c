"""`python -m bench [--quick] [--profile]` (and `--speed`, `--status`, `--push`, `--fcm`, `--sip`, `--app-calls`,
`--sockets`, `--sip-pair`, `--app-calls-pair`, `--ops`, `--wait`, `--chaos`, `--ghosts`, `--scale`,
`--webhooks`): every figure printed next to its baseline from the same run (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from bench import setup_latency, status
from bench.http_load import run_wrk, wrk_binary
from bench.noise import Noise
from bench.procs import Cluster, cpu_plan
from bench.profile import profile_during

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup: float
    connections: int
    rates: tuple[tuple[float, int], ...]  # (calls per second, calls)


FULL = Plan(rounds=3, seconds=6, warmup=2, connections=32, rates=((20, 200), (100, 1000)))
QUICK = Plan(rounds=1, seconds=3, warmup=1, connections=32, rates=((20, 40), (100, 200)))
STATUS_CALLS = 4


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # the nodes run on uvloop too, when it is installed
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="about 30 s instead of about 3 min")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the node under status load (with --sip, --push, --app-calls: under theirs)",
    )
    parser.add_argument("--speed", action="store_true", help="issue 12's table, every row in one run (bench/speed.py)")
    parser.add_argument("--push", action="store_true", help="only the APNs push bench (bench/push.py)")
    parser.add_argument(
        "--app-calls",
        action="store_true",
        help="app-to-app calls over WebSocket: node CPU per call vs a bare echo (bench/app_calls.py)",
    )
    parser.add_argument(
        "--fcm", action="store_true", help="only FCM sends: our sender vs bare httpx on fcmsim (bench/fcm.py)"
    )
    parser.add_argument("--sip", action="store_true", help="only the SIP gateway bench under sipp (bench/sip.py)")
    parser.add_argument("--ops", action="store_true", help="only the ops live feed bench (bench/ops.py)")
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="node CPU per call with call-event webhooks on and off (bench/webhooks.py)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="only what WAIT 1 costs call creation (bench/redis_wait.py)"
    )
    parser.add_argument(
        "--chaos", action="store_true", help="the chaos run (bench/chaos.py); exits 1 if an invariant broke"
    )
    parser.add_argument(
        "--sockets",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="N",
        help="N idle device WebSockets in a storm: errors, node KiB per socket (bench/sockets.py; 10,000)",
    )
    parser.add_argument(
        "--ghosts",
        action="store_true",
        help="issue 16's ghost-call experiment (bench/ghosts.py); exits 1 on a missed goal",
    )
    parser.add_argument("--calls", type=int, default=1000, help="--ghosts: calls per condition (default 1000)")
    parser.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="NAME",
        help="--ghosts: only this condition (repeatable; default every one: baseline, node_killed,"
        " redis_failover, status_slow, status_unreachable, half_open)",
    )
    parser.add_argument("--status", action="store_true", help="only the status endpoint vs bare (bench/status.py)")
    parser.add_argument(
        "--redis-cluster",
        "--cluster",
        action="store_true",
        help="--status, --scale: on a local Redis Cluster (6 redis-servers, tests/redis_cluster.py)",
    )
    parser.add_argument(
        "--pinned", action="store_true", help="--status: the node on one CPU, wrk and Redis on the other"
    )
    parser.add_argument(
        "--scale", action="store_true", help="calls/s on 1 and 2 nodes, Redis per call (bench/scale.py)"
    )
    parser.add_argument(
        "--redis-url",
        default="",
        help="--scale, --status: the Redis to run on (default: REDIS_URL, else a private one)",
    )
    parser.add_argument(
        "--sip-pair",
        nargs="+",
        metavar="CHECKOUT",
        default=[],
        help="this node and other checkouts' side by side under sipp (bench/sip_pair.py)",
    )
    parser.add_argument(
        "--app-calls-pair",
        nargs="+",
        metavar="OTHER",
        help="this node and other checkouts', app-to-app calls in interleaved windows (bench/app_calls.py)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="--sip-pair, --app-calls-pair: rounds (default 6)")
    parser.add_argument(
        "--rates", default="", help="--sip: these calls/s (comma-separated) instead of the ladder; --sip-pair: its rate"
    )
    parser.add_argument("--profile-raw", default="", help="--sip --profile: also keep py-spy's raw stacks in this file")
    parser.add_argument("--seconds", type=float, default=180.0, help="--chaos: how long the phones call (default 180)")
    parser.add_argument(
        "--seed", type=int, default=1, help="--chaos: what to break, in which order; --ghosts: the population"
    )
    args = parser.parse_args()
    if args.speed:
        from bench import speed

        return speed.main(quick=args.quick)
    if args.sockets is not None:
        from bench import sockets

        return sockets.main(sockets=args.sockets, quick=args.quick)
    if args.app_calls_pair:
        from bench import app_calls

        return app_calls.main_pair(args.app_calls_pair, rounds=args.rounds, quick=args.quick)
    if args.app_calls:
        from bench import app_calls

        return app_calls.main(quick=args.quick, profile=args.profile)
    if args.status:
        return status.main(
            quick=args.quick, redis_url=args.redis_url, redis_cluster=args.redis_cluster, pinned=args.pinned
        )
    if args.scale:
        from bench import scale

        return scale.main(quick=args.quick, redis_url=args.redis_url, redis_cluster=args.redis_cluster)
    if args.ghosts:
        from bench import ghosts

        raise SystemExit(ghosts.main(calls=args.calls, seed=args.seed, conditions=args.condition or ghosts.CONDITIONS))
    if args.chaos:
        from bench import chaos

        raise SystemExit(chaos.main(seconds=args.seconds, seed=args.seed))
    if args.wait:
        from bench import redis_wait

        return redis_wait.main()
    if args.webhooks:
        from bench import webhooks

        return webhooks.main(quick=args.quick)
    if args.ops:
        from bench import ops

        return ops.main(quick=args.quick)
    if args.fcm:
        from bench import fcm

        return fcm.main(quick=args.quick)
    if args.push:
        from bench import push

        return push.main(quick=args.quick, profile=args.profile)
    if args.sip_pair:
        from bench import sip_pair

        rates = [float(r) for r in args.rates.split(",")] if args.rates else [20.0]
        return sip_pair.main(args.sip_pair, rate=rates[0], rounds=args.rounds)
    if args.sip:
        from bench import sip

        return sip.main(
            quick=args.quick,
            rates=tuple(float(r) for r in args.rates.split(",")) if args.rates else (),
            profile=args.profile,
            profile_raw=args.profile_raw,
        )
    plan = QUICK if args.quick else FULL
    wrk_binary()  # fail before starting anything
    server_cpu, load_cpu = cpu_plan()
    if load_cpu >= 0:
        # Redis, wrk and the WebSocket clients inherit this CPU; the nodes take the other.
        os.sched_setaffinity(0, {load_cpu})
    began, noise = time.monotonic(), Noise()
    print(f"# voip bench: {machine()}; nodes on CPU {server_cpu}, load and Redis on CPU {load_cpu}")
    with Cluster(server_cpu) as cluster:
        node_a = cluster.start_node("a")
        call_ids = _run(status.make_calls(cluster, node_a, STATUS_CALLS))
        loads = status.workloads(cluster, call_ids)
        results = status.measure(
            node_a, loads, rounds=plan.rounds, seconds=plan.seconds, warmup=plan.warmup, connections=plan.connections
        )
        print("\n".join(status.report(results, plan.connections, plan.seconds)), flush=True)
        if args.profile:
            bearer = loads[1]
            print(
                "\n".join(
                    profile_during(
                        node_a.process.pid,
                        plan.seconds,
                        lambda: run_wrk(
                            node_a.base_url,
                            bearer.paths,
                            connections=plan.connections,
                            seconds=plan.seconds,
                            headers=bearer.headers,
                        ),
                    )
                ),
                flush=True,
            )
        node_b = cluster.start_node("b")
        rows, floors = _run(_latencies(cluster, node_a.ws_url, node_b.ws_url, plan))
        print("\n".join(setup_latency.report(rows, floors)))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")


async def _latencies(
    cluster: Cluster, ws_a: str, ws_b: str, plan: Plan
) -> tuple[list[setup_latency.Latencies], dict[float, setup_latency.Latencies]]:
    rows: list[setup_latency.Latencies] = []
    floors: dict[float, setup_latency.Latencies] = {}
    for rate, count in plan.rates:
        floors[rate] = await setup_latency.pubsub_floor(cluster.redis_url, cluster.prefix, rate=rate, count=count)
        rows.append(floors[rate])
        for name, callee_ws in (("same-node", ws_a), ("cross-node", ws_b)):
            incoming, started = await setup_latency.call_setup(
                name, ws_a, callee_ws, cluster.auth, rate=rate, count=count
            )
            rows += [incoming, started]
    return rows, floors


if __name__ == "__main__":
    main()
