"""FCM sends: our sender against a bare httpx client, on the FCM simulator.

    python -m bench --fcm [--quick]     (about 70 s; quick about 20 s)

The simulator runs in a process of its own (`python -m fcmsim`), pinned to the load CPU;
this process (both clients) to the other. Both clients send the same invites to the same
64 tokens with the same access token, through one httpx.AsyncClient each (HTTP/1.1
keep-alive to the simulator, the same connection limit), with the same number of sends in
flight, in interleaved rounds:

- `FCMNotifier.notify`: what a call's invite costs us: the data message built from a
  `Push` (the ttl from the deadline), the access token from the cache, the answer parsed
  and judged into a `PushResult`.
- bare httpx: `client.post(url, content=<the same JSON, built once>)`, status read.

Figures: sends/s, and this process's CPU per send (time.process_time over the round):
the simulator, a Python HTTP server, is the ceiling for both, so sends/s say how close
each client gets to it and CPU per send what each costs. The bench fails if any send is
not accepted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.noise import Noise
from bench.procs import ROOT, cpu_plan, cpu_seconds, wait_or_kill
from bench.rounds import Plan, Round, Send, closed_loop, interleaved
from bench.stats import median, ratio
from fcmsim import new_token
from voip.push import Caller, FCMConfig, FCMNotifier, Outcome, Push, PushKind

PROJECT = "bench-project"
TOKENS = 64
CONNECTIONS = 16


FULL = Plan(rounds=3, seconds=5, warmup=1, concurrency=(1, 16))
QUICK = Plan(rounds=1, seconds=3, warmup=0.5, concurrency=(16,))


class Simulator:
    """`python -m fcmsim` in its own process, pinned to `cpu`, with a key it trusts."""

    def __init__(self, cpu: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-fcm-"))
        self.key_file = self.dir / "key.json"
        prefix = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "fcmsim", "--project", PROJECT, "--key-file", str(self.key_file)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("FCM_ENDPOINT="):
            raise RuntimeError(f"the FCM simulator did not start: {line!r}")
        self.endpoint = line.split("=", 1)[1]

    def key(self) -> dict[str, Any]:
        key: dict[str, Any] = orjson.loads(self.key_file.read_bytes())
        return key

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        wait_or_kill(self.process)


async def measure(sim: Simulator, plan: Plan) -> list[Round]:
    notifier = FCMNotifier(
        FCMConfig(project_id=PROJECT, credentials=sim.key(), endpoint=sim.endpoint, max_connections=CONNECTIONS)
    )
    bare = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS), timeout=5
    )
    tokens = [new_token() for _ in range(TOKENS)]
    caller = Caller("alice", "Alice")
    status_url = "http://127.0.0.1:8080/v1/calls/00000000-0000-0000-0000-000000000000/status?device_id=d&cap=x"
    authorization = await notifier.tokens.header()  # the same access token for both
    url = notifier.url
    deadline = time.time() + 3600
    # The bare client's bodies: the very JSON our sender writes, built once, ahead.
    bodies = [
        notifier.body(
            FCMNotifier.request(
                Push(PushKind.INVITE, f"call-{i}", {"token": t}, deadline, caller=caller, status_url=status_url)
            ),
            3600,
        )
        for i, t in enumerate(tokens)
    ]
    headers = {"authorization": authorization, "content-type": "application/json"}

    async def ours(i: int) -> bool:
        push = Push(
            PushKind.INVITE,
            f"call-{i}",
            {"platform": "android", "token": tokens[i % TOKENS]},
            time.time() + 30,
            caller=caller,
            status_url=status_url,
        )
        return (await notifier.notify(push)).outcome is Outcome.ACCEPTED

    async def theirs(i: int) -> bool:
        response = await bare.post(url, content=bodies[i % TOKENS], headers=headers)
        return response.status_code == 200

    async def measured(name: str, send: Send, concurrency: int) -> Round:
        sim_cpu = sim.cpu()
        loop = await closed_loop(send, concurrency, plan.seconds)
        return Round(name, concurrency, loop.ok, loop.failed, loop.seconds, loop.cpu_s, sim.cpu() - sim_cpu)

    clients = {"FCMNotifier.notify": ours, "bare httpx": theirs}
    try:
        # The warm-up opens every connection.
        return await interleaved(clients, plan, measured, alternate=True)
    finally:
        await notifier.aclose()
        await bare.aclose()


def report(rounds: list[Round]) -> list[str]:
    lines = [
        "## FCM sends: FCMNotifier.notify vs a bare httpx client, same simulator, same requests",
        "| client | in flight | sends/s (median) | CPU µs per send (median) | simulator CPU per send µs | failed |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency in sorted({r.concurrency for r in rounds}):
        by_client: dict[str, list[Round]] = {}
        for r in rounds:
            if r.concurrency == concurrency:
                by_client.setdefault(r.client, []).append(r)
        for name, mine in by_client.items():
            sim_us = median([r.sim_us_per_send for r in mine])
            lines.append(
                f"| {name} | {concurrency} | {median([r.rate for r in mine]):.0f} | "
                f"{median([r.cpu_us_per_send for r in mine]):.0f} | {sim_us:.0f} | {sum(r.failed for r in mine)} |"
            )
        ours, bare = by_client["FCMNotifier.notify"], by_client["bare httpx"]
        lines.append(
            f"| ratio ours/bare | {concurrency} | "
            f"{ratio(median([r.rate for r in ours]), median([r.rate for r in bare])):.2f} x | "
            f"{ratio(median([r.cpu_us_per_send for r in ours]), median([r.cpu_us_per_send for r in bare])):.2f} x | | |"
        )
    return lines


def main(quick: bool = False) -> None:
    plan = QUICK if quick else FULL
    load_cpu, bench_cpu = cpu_plan()  # the simulator on one CPU, both clients on the other
    noise = Noise()
    sim = Simulator(load_cpu)
    try:
        if bench_cpu >= 0:
            os.sched_setaffinity(0, {bench_cpu})
        print(f"# FCM simulator at {sim.endpoint} on CPU {load_cpu}; clients on CPU {bench_cpu}", flush=True)
        from bench.__main__ import _run  # uvloop when installed, as the nodes run

        rounds = _run(measure(sim, plan))
    finally:
        sim.stop()
    print("\n".join(report(rounds)))
    print(noise.report())
    failed = sum(r.failed for r in rounds)
    if failed:
        raise SystemExit(f"{failed} sends were not accepted")
