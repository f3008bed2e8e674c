"""Counts a bench node's Redis round trips, exactly, from inside the node, two ways.

**Writes.** One write of a request to Redis whose replies the node then waits for: one
`send_packed_command` of redis-py (a single command, or a whole pipeline, which redis-py
packs into one write; on a cluster, one per shard a batch touches) or one `RedisPipe._send`
or `RedisPipe._send_many` (the node's lean connection on one Redis: the status endpoint's
script, and the call path's scripts and pipelines) or `ClusterPipe._write` (its own on a
cluster; an ASK's ASKING counts apart). Health-check PINGs go through the same call, so they count
too. Subscriber connections only read once subscribed; what they read is not a write.
Each write is tallied under its kind: the names of the commands it carried, an EVALSHA by
its script's file name (`EVALSHA:create_call`), a pipeline as `A+B+C`, a batch of timeline
entries as one kind (TIMELINE_BATCH). On a cluster writes are what the shards serve.

**Waits.** How many replies, one after another, a piece of work waits for: its writes sent
at once (a cluster batch's write per shard, an asyncio.gather) are one wait. Each piece of
work counted (WORK: a call set-up, a timeline batch, a tick's ring-timeout claims) carries a
chain in a context variable, which the tasks it starts inherit: a write is one step deeper
than the deepest reply the chain had read when it was sent, and the work's waits are its
deepest step (each counted when a write first reaches it). A write outside those pieces
counts as one wait of its own, under its kind.
On one Redis writes and waits are the same count; on a cluster waits are what a set-up's
latency pays, and docs/benchmarks.md reads the goal of at most 3 against them.

Counting is off until `POST /bench/redis-round-trips?on=1` (which also resets the tally), so
the throughput runs pay nothing for it; `GET` returns `{"on", "total", "kinds", "waits",
"work"}`: writes by kind, waits by piece of work (or by kind, outside one), and how many of
each piece of work began (counted at its first write, as its waits are).
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from redis.asyncio.connection import AbstractConnection
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from voip.controller import CallController
from voip.redis_cluster_pipe import ClusterPipe
from voip.redis_pipe import RedisPipe
from voip.stores.calls import CallStore

PATH = "/bench/redis-round-trips"

_SCRIPTS = {
    hashlib.sha1(path.read_text().encode()).hexdigest().encode(): path.name.removesuffix(".lua")
    for path in resources.files("voip").joinpath("lua").iterdir()
    if path.name.endswith(".lua")
}


# A pipeline of timeline entries for several calls, or several entries of one
# (voip/delivery_log.py); a single entry stays "RPUSH+PUBLISH".
TIMELINE_BATCH = "RPUSH+PUBLISH+... (timeline batch)"

# The pieces of work whose waits are counted as chains: (class, method, name).
SET_UP = "call set-up (CallController.start_call)"
TIMELINES = "timeline batch (CallStore.append_timelines)"
CLAIMS = "ring-timeout claims (CallStore.claim_due_timeouts)"
WORK: list[tuple[type, str, str]] = [
    (CallController, "start_call", SET_UP),
    (CallStore, "append_timelines", TIMELINES),
    (CallStore, "claim_due_timeouts", CLAIMS),
]


@dataclass
class Chain:
    """One piece of work's replies, one after another."""

    work: str
    read: int = 0  # the deepest step whose reply the work has read
    deepest: int = 0  # the deepest step it has written
    done: bool = False

    def wrote(self) -> tuple[int, bool]:
        """The step this write is, and whether it is a wait more for the work."""
        step = self.read + 1
        deeper = step > self.deepest
        self.deepest = max(self.deepest, step)
        return step, deeper

    def got(self, step: int) -> None:
        self.read = max(self.read, step)


_chain: ContextVar[Chain | None] = ContextVar("bench_redis_chain", default=None)


class RoundTrips:
    def __init__(self) -> None:
        self.on = False
        self.kinds: Counter[str] = Counter()  # writes, by kind
        self.waits: Counter[str] = Counter()  # by piece of work, or by kind outside one
        self.work: Counter[str] = Counter()  # pieces of work begun (their first write)
        # The step each connection's last write was, while its replies are read.
        self._steps: dict[int, int] = {}

    def clear(self) -> None:
        self.kinds.clear()
        self.waits.clear()
        self.work.clear()

    def count(self, packed: bytes) -> tuple[Chain, int] | None:
        """A write: tallied by kind, and as a wait when it is one (counted as it is written, as
        the writes are, so that a window's edge splits the two alike); returns its chain and
        step (None: outside a piece of work, a wait of its own)."""
        if not self.on:
            return None
        kind = kind_of(packed)
        self.kinds[kind] += 1
        chain = _chain.get()
        if chain is None or chain.done:
            self.waits[kind] += 1
            return None
        if chain.deepest == 0:
            # A piece of work is counted at its first write, as its waits are at theirs: a
            # window's edge that falls inside it (a claim tick begun before the window
            # opened, or still waiting when it is read) splits work and waits alike.
            self.work[chain.work] += 1
        step, deeper = chain.wrote()
        if deeper:
            self.waits[chain.work] += 1
        return chain, step

    def wrote(self, connection: object, packed: bytes) -> None:
        counted = self.count(packed)
        if counted is not None:
            self._steps[id(connection)] = counted[1]

    def read(self, connection: object) -> None:
        chain = _chain.get()
        step = self._steps.get(id(connection))
        if chain is not None and step is not None:
            chain.got(step)

    def finished(self, chain: Chain) -> None:
        chain.done = True


def kind_of(packed: bytes) -> str:
    """`*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n*...` -> "GET+..." (RESP arrays of bulk strings)."""
    names: list[str] = []
    lines = packed.split(b"\r\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"*"):
        parts = int(lines[i][1:])
        name = lines[i + 2].upper().decode()
        if name == "EVALSHA":
            name += ":" + _SCRIPTS.get(lines[i + 4].lower(), lines[i + 4].decode()[:8])
        names.append(name)
        i += 1 + 2 * parts
    if len(names) > 2 and set(names) == {"RPUSH", "PUBLISH"}:
        return TIMELINE_BATCH  # one kind, whatever the batch held
    return "+".join(names) or "?"


T = TypeVar("T")


def _packed(command: bytes | str | Iterable[bytes]) -> bytes:
    if isinstance(command, str):
        return command.encode()
    return command if isinstance(command, bytes) else b"".join(command)


def install(round_trips: RoundTrips) -> Route:
    """Wraps every way a node writes to Redis and reads a reply, and the pieces of work
    whose waits are chains; returns the bench route that reads the tally."""
    send_packed = AbstractConnection.send_packed_command
    read_response = AbstractConnection.read_response
    pipe_send = RedisPipe._send
    pipe_send_many = RedisPipe._send_many
    cluster_write = ClusterPipe._write

    async def counted_send_packed(
        self: AbstractConnection, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if round_trips.on:
            round_trips.wrote(self, _packed(command))
        await send_packed(self, command, check_health)

    async def counted_read_response(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        reply = await read_response(self, *args, **kwargs)
        if round_trips.on:
            round_trips.read(self)
        return reply

    async def counted_pipe_send(self: RedisPipe, protocol: Any, command: bytes) -> Any:
        counted = round_trips.count(command)
        reply = await pipe_send(self, protocol, command)
        if counted is not None:
            counted[0].got(counted[1])
        return reply

    async def counted_pipe_send_many(self: RedisPipe, protocol: Any, commands: list[bytes]) -> list[Any]:
        counted = round_trips.count(b"".join(commands))
        replies = await pipe_send_many(self, protocol, commands)
        if counted is not None:
            counted[0].got(counted[1])
        return replies

    def counted_cluster_write(self: ClusterPipe, link: Any, command: bytes) -> Any:
        counted = round_trips.count(command)
        future = cluster_write(self, link, command)
        if counted is not None:
            chain, step = counted
            future.add_done_callback(lambda _: chain.got(step))
        return future

    AbstractConnection.send_packed_command = counted_send_packed  # type: ignore[method-assign]
    AbstractConnection.read_response = counted_read_response  # type: ignore[method-assign]
    RedisPipe._send = counted_pipe_send  # type: ignore[method-assign]
    RedisPipe._send_many = counted_pipe_send_many  # type: ignore[method-assign]
    ClusterPipe._write = counted_cluster_write  # type: ignore[method-assign]
    for owner, name, work in WORK:
        setattr(owner, name, _traced(round_trips, work, getattr(owner, name)))

    async def endpoint(request: Request) -> JSONResponse:
        if request.method == "POST":
            round_trips.on = request.query_params.get("on") == "1"
            round_trips.clear()
        return JSONResponse(
            {
                "on": round_trips.on,
                "total": sum(round_trips.kinds.values()),
                "kinds": dict(round_trips.kinds),
                "waits": dict(round_trips.waits),
                "work": dict(round_trips.work),
            }
        )

    return Route(PATH, endpoint, methods=["GET", "POST"])


def _traced(round_trips: RoundTrips, work: str, method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """`method`, its Redis waits counted as one chain (the tasks it starts inherit it)."""

    @functools.wraps(method)
    async def traced(*args: Any, **kwargs: Any) -> T:
        if not round_trips.on or _chain.get() is not None:
            return await method(*args, **kwargs)
        chain = Chain(work)
        token = _chain.set(chain)
        try:
            return await method(*args, **kwargs)
        finally:
            _chain.reset(token)
            round_trips.finished(chain)

    return traced
