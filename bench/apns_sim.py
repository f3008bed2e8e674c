"""The APNs simulator in a process of its own, as `python -m apnsim` runs it (same class,
same plain asyncio loop), plus a pipe on stdin/stdout so the bench can read what it received.
`python -m apnsim` keeps its records in its own memory; this is the smallest way to get
`received_at` out of another process.

    python -m bench.apns_sim --cpu 0 --dir DIR

Prints one JSON line: endpoint, ca_file, key_file, key_id, team_id. Then answers one JSON
line per command line on stdin:

    stats     {"requests": n, "ok": n, "connections": n, "cpu_s": s, "runq_s": s}   (since start;
              runq_s: time spent runnable, waiting for the CPU)
    receipts  [[call_id, received_at, status, sent_at_ms, expires_at_ms], ...]
              for the requests recorded since the last `clear` whose body has a call_id
    clear     forget recorded requests, accepted pushes and inboxes (memory stays flat)

EOF on stdin (or SIGTERM) stops it, with GOAWAY Shutdown as `python -m apnsim` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from apnsim import APNsSimulator

TEAM_ID, KEY_ID = "BENCHTEAM1", "BENCHKEY01"


def runq_seconds(pid: str = "self") -> float:
    """Time spent runnable but waiting for a CPU (another process had it)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[1]) / 1e9


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Counters:
    requests = 0
    ok = 0


def _answer(sim: APNsSimulator, counters: Counters, command: str) -> Any:
    if command == "stats":
        return {
            "requests": counters.requests + len(sim.requests),
            "ok": counters.ok + sum(1 for r in sim.requests if r.status == 200),
            "connections": len(sim.connections),
            "cpu_s": _cpu_seconds(),
            "runq_s": runq_seconds(),
        }
    if command == "receipts":
        rows = []
        for record in sim.requests:
            try:
                body = orjson.loads(record.body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(body, dict) and "call_id" in body:
                rows.append(
                    [body["call_id"], record.received_at, record.status, body.get("sent_at"), body.get("expires_at")]
                )
        return rows
    if command == "clear":
        counters.requests += len(sim.requests)
        counters.ok += sum(1 for r in sim.requests if r.status == 200)
        sim.log.requests.clear()
        sim.accepted.clear()
        for device in sim.devices:
            device.inbox.clear()
        return {"cleared": True}
    return {"error": f"unknown command {command!r}"}


async def run(directory: Path) -> None:
    sim = APNsSimulator(directory)
    await sim.start()
    key = sim.create_key(TEAM_ID, KEY_ID)
    key_file = directory / f"AuthKey_{KEY_ID}.p8"
    key_file.write_text(key.private_pem)
    key_file.chmod(0o600)
    sys.stdout.write(
        orjson.dumps(
            {
                "endpoint": sim.endpoint,
                "ca_file": sim.ca_file,
                "key_file": str(key_file),
                "key_id": KEY_ID,
                "team_id": TEAM_ID,
            }
        ).decode()
        + "\n"
    )
    sys.stdout.flush()

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    counters = Counters()

    async def serve_commands() -> None:
        while line := await reader.readline():
            reply = _answer(sim, counters, line.decode().strip())
            sys.stdout.write(orjson.dumps(reply).decode() + "\n")
            sys.stdout.flush()
        stopping.set()

    commands = asyncio.create_task(serve_commands())
    await stopping.wait()
    commands.cancel()
    await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.apns_sim")
    parser.add_argument("--cpu", type=int, default=-1, help="pin to this CPU (-1: no pinning)")
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(run(args.dir))  # the loop `python -m apnsim` runs on


if __name__ == "__main__":
    main()
