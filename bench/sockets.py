"""Idle device WebSockets: N opened to one node at once (a storm), every one must connect;
then the node's memory per socket, against the same node just before the storm.

    python -m bench --sockets [N] [--quick]      (N default 10,000; --quick 2,000; about 1 min)

1. The node (its own process, pinned to a CPU; `VOIP_HTTP_MAX_CONNECTIONS` above N) is
   warmed: WARM sockets opened, heard `hello` on, closed, so that lazy imports and first
   allocations are not charged to the storm. Its RSS (VmRSS) then is the baseline.
2. The storm: N devices (a user each, as N phones) connect from this process, IN_FLIGHT
   opening at any moment, each counted connected once it hears `hello` (the node has
   subscribed it, marked it present and counted it). A connection refused, reset, timed
   out or closed (1013 when the node's Redis pool wait, VOIP_REDIS_POOL_TIMEOUT, runs out)
   is an error; the goal is none. With 1,000 opening at once, this node (about 100 opens/s
   on a loaded CPU) answered a quarter of them 1013: the wait for a Redis connection
   passed its 2 s. An app reconnects after 1013 with backoff; here it counts as an error.
3. Once all are in and the node is quiet again (SETTLE seconds), its RSS again: growth per
   socket in KiB. The sockets stay idle (the node's 20 s pings go on) and are then closed.

`ulimit -n` is raised to its hard limit here (the node inherits it; bench/server.py raises
its own too): N sockets need N descriptors on each side.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from bench.noise import Noise
from bench.procs import Cluster, NodeProcess, cpu_plan
from bench.sip import rss_kib
from voip.auth import Authenticator

GOAL_KIB = 24.0  # issue 12: node memory per idle device WebSocket at 10,000 per node
SOCKETS, QUICK_SOCKETS = 10_000, 2_000
WARM = 200
SETTLE = 3.0  # seconds after the last hello before RSS is read
OPEN_TIMEOUT = 60.0  # a storm queues; a connection that waits longer than this is an error
IN_FLIGHT = 200  # connections opening at once (see the module doc)


def raise_open_files(wanted: int) -> int:
    """The soft limit on open descriptors raised towards `wanted` (up to the hard limit);
    returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass(frozen=True)
class Storm:
    sockets: int  # asked for
    connected: int
    errors: dict[str, int]  # error kind -> count
    seconds: float  # from the first connect to the last hello
    rss_before_kib: int
    rss_after_kib: int

    @property
    def kib_per_socket(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(self.connected, 1)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def met(self) -> bool:
        return self.error_count == 0 and self.connected == self.sockets and self.kib_per_socket <= GOAL_KIB

    def lines(self) -> list[str]:
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items())) or "none"
        return [
            f"storm: {self.connected} of {self.sockets} device sockets connected in {self.seconds:.1f}s"
            f" ({self.connected / self.seconds:.0f}/s, {IN_FLIGHT} opening at once); errors: {errors}",
            f"node RSS {self.rss_before_kib / 1024:.1f} MiB before, {self.rss_after_kib / 1024:.1f} MiB with"
            f" {self.connected} idle sockets: {self.kib_per_socket:.1f} KiB per socket (goal <= {GOAL_KIB:g})",
        ]


async def _connect(url: str, token: str) -> ClientConnection:
    socket = await websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=OPEN_TIMEOUT,
        ping_interval=None,  # the node pings; N client keep-alive tasks would only load this process
        max_queue=None,
        compression=None,  # phones' clients (URLSessionWebSocketTask) offer none
    )
    async with asyncio.timeout(OPEN_TIMEOUT):
        hello = orjson.loads(await socket.recv())
    if hello.get("type") != "hello":
        await socket.close()
        raise RuntimeError(f"expected hello, got {hello}")
    return socket


async def open_many(
    node: NodeProcess, auth: Authenticator, users: list[str]
) -> tuple[list[ClientConnection], dict[str, int]]:
    """Every user's phone at once (at most IN_FLIGHT opening at a time); the sockets that
    connected, and the errors of those that did not, by kind."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    errors: dict[str, int] = {}
    opened: list[ClientConnection] = []

    async def one(user: str) -> None:
        token = auth.mint(user, "device")
        async with gate:
            try:
                opened.append(await _connect(f"{node.ws_url}?device_id=phone", token))
            except Exception as exc:  # the storm counts them; the goal is none
                kind = type(exc).__name__
                if isinstance(exc, websockets.ConnectionClosed) and exc.rcvd is not None:
                    kind = f"closed {exc.rcvd.code} {exc.rcvd.reason}"
                errors[kind] = errors.get(kind, 0) + 1

    await asyncio.gather(*(one(user) for user in users))
    return opened, errors


async def close_all(sockets: list[ClientConnection]) -> None:
    for start in range(0, len(sockets), IN_FLIGHT):
        await asyncio.gather(*(s.close() for s in sockets[start : start + IN_FLIGHT]), return_exceptions=True)


async def storm(cluster: Cluster, node: NodeProcess, sockets: int) -> Storm:
    pid = node.process.pid
    warm, warm_errors = await open_many(node, cluster.auth, [f"warm-{i}" for i in range(WARM)])
    await close_all(warm)
    if warm_errors:
        raise RuntimeError(f"warm-up sockets failed: {warm_errors}")
    await asyncio.sleep(SETTLE)
    before = rss_kib(pid)
    began = time.perf_counter()
    opened, errors = await open_many(node, cluster.auth, [f"phone-{i}" for i in range(sockets)])
    seconds = time.perf_counter() - began
    try:
        await asyncio.sleep(SETTLE)
        after = rss_kib(pid)
    finally:
        await close_all(opened)
    return Storm(sockets, len(opened), errors, seconds, before, after)


def node_env(sockets: int) -> dict[str, str]:
    return {"VOIP_HTTP_MAX_CONNECTIONS": str(sockets + WARM + 100)}


async def run(sockets: int) -> Storm:
    """The whole bench in this event loop: Redis and the node started and stopped here,
    this process's CPU affinity restored."""
    raise_open_files(2 * sockets + 1000)
    server_cpu, load_cpu = cpu_plan()
    affinity = os.sched_getaffinity(0)
    if load_cpu >= 0:
        os.sched_setaffinity(0, {load_cpu})  # Redis starts from here, and inherits it
    try:
        with Cluster(server_cpu) as cluster:
            node = cluster.start_node("sockets", env=node_env(sockets))
            return await storm(cluster, node, sockets)
    finally:
        os.sched_setaffinity(0, affinity)


def main(*, sockets: int = 0, quick: bool = False) -> None:
    """`sockets`: this many instead of SOCKETS (QUICK_SOCKETS with `quick`)."""
    from bench.__main__ import _run, machine

    count = sockets or (QUICK_SOCKETS if quick else SOCKETS)
    began, noise = time.monotonic(), Noise()
    limit = raise_open_files(2 * count + 1000)
    print(f"# idle device sockets: {machine()}; {count} sockets, open files limit {limit}", flush=True)
    result = _run(run(count))
    print("\n".join(result.lines()))
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")
