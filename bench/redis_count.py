"""Counts a bench node's Redis round trips, exactly, from inside the node.

A round trip is one write of a request to Redis whose replies the node then waits for: one
`send_packed_command` of redis-py (a single command, or a whole pipeline, which redis-py
packs into one write), or one `RedisPipe._send` or `ClusterPipe._write` (the status
endpoint's own connection, on one Redis or a cluster; an ASK's ASKING counts apart).
Health-check PINGs go through the same call, so they count too. Subscriber connections
only read once subscribed; what they read is not a round trip.

Each round trip is tallied under its kind: the names of the commands it carried, an
EVALSHA by its script's file name (`EVALSHA:create_call`), a pipeline as `A+B+C`, a
batch of timeline entries as one kind (TIMELINE_BATCH). Counting is off until
`POST /bench/redis-round-trips?on=1` (which also resets the tally), so the throughput
runs pay nothing for it; `GET` returns `{"on", "total", "kinds"}`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from typing import Any

from redis.asyncio.connection import AbstractConnection
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from voip.redis_cluster_pipe import ClusterPipe
from voip.redis_pipe import RedisPipe

PATH = "/bench/redis-round-trips"

_SCRIPTS = {
    hashlib.sha1(path.read_text().encode()).hexdigest().encode(): path.name.removesuffix(".lua")
    for path in resources.files("voip").joinpath("lua").iterdir()
    if path.name.endswith(".lua")
}


# A pipeline of timeline entries for several calls, or several entries of one
# (voip/delivery_log.py); a single entry stays "RPUSH+PUBLISH".
TIMELINE_BATCH = "RPUSH+PUBLISH+... (timeline batch)"


class RoundTrips:
    def __init__(self) -> None:
        self.on = False
        self.kinds: Counter[str] = Counter()

    def count(self, packed: bytes) -> None:
        if self.on:
            self.kinds[kind_of(packed)] += 1


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


def install(round_trips: RoundTrips) -> Route:
    """Wraps both ways a node writes to Redis; returns the bench route that reads the tally."""
    send_packed = AbstractConnection.send_packed_command
    pipe_send = RedisPipe._send
    cluster_write = ClusterPipe._write

    async def counted_send_packed(
        self: AbstractConnection, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if round_trips.on:
            packed = (
                command.encode()
                if isinstance(command, str)
                else (command if isinstance(command, bytes) else b"".join(command))
            )
            round_trips.count(packed)
        await send_packed(self, command, check_health)

    async def counted_pipe_send(self: RedisPipe, protocol: Any, command: bytes) -> Any:
        round_trips.count(command)
        return await pipe_send(self, protocol, command)

    def counted_cluster_write(self: ClusterPipe, link: Any, command: bytes) -> Any:
        round_trips.count(command)
        return cluster_write(self, link, command)

    AbstractConnection.send_packed_command = counted_send_packed  # type: ignore[method-assign]
    RedisPipe._send = counted_pipe_send  # type: ignore[method-assign]
    ClusterPipe._write = counted_cluster_write  # type: ignore[method-assign]

    async def endpoint(request: Request) -> JSONResponse:
        if request.method == "POST":
            round_trips.on = request.query_params.get("on") == "1"
            round_trips.kinds.clear()
        return JSONResponse(
            {
                "on": round_trips.on,
                "total": sum(round_trips.kinds.values()),
                "kinds": dict(round_trips.kinds),
            }
        )

    return Route(PATH, endpoint, methods=["GET", "POST"])
