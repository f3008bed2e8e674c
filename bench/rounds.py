"""Clients that do the same sends, measured in interleaved rounds: at each number of sends
in flight every client is warmed up, then the clients take turns, round after round, so
that each sees the same machine. A round is a closed loop: `concurrency` sends in flight
until its seconds are up; this process's CPU over it, per send, is what a client costs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")

Send = Callable[[int], Awaitable[bool]]
"""The i-th send of a round; True when it was accepted."""


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float  # a round's
    warmup: float  # seconds a client, at each concurrency
    concurrency: tuple[int, ...]  # sends in flight


@dataclass(frozen=True)
class Round:
    client: str
    concurrency: int
    sends: int  # accepted
    failed: int
    seconds: float
    cpu_s: float  # this process's, the client's
    sim_cpu_s: float  # the simulator's

    @property
    def rate(self) -> float:
        return self.sends / self.seconds

    @property
    def cpu_us_per_send(self) -> float:
        return self.cpu_s / max(1, self.sends) * 1e6

    @property
    def sim_us_per_send(self) -> float:
        return self.sim_cpu_s / max(1, self.sends) * 1e6


@dataclass(frozen=True)
class Loop:
    ok: int
    failed: int
    seconds: float
    cpu_s: float


async def closed_loop(send: Send, concurrency: int, seconds: float) -> Loop:
    """`concurrency` sends in flight until `seconds` are up."""
    counter = itertools.count()
    ok = failed = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal ok, failed
        while time.perf_counter() < stop:
            if await send(next(counter)):
                ok += 1
            else:
                failed += 1

    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Loop(ok, failed, time.perf_counter() - began, time.process_time() - cpu)


async def interleaved(
    clients: Mapping[str, Send],
    plan: Plan,
    measure: Callable[[str, Send, int], Awaitable[R]],
    *,
    alternate: bool = False,
) -> list[R]:
    """At each of the plan's concurrencies, every client warmed up, then the plan's rounds
    of `measure(name, send, concurrency)` a client. `alternate`: every other round the
    clients go in reverse order."""
    measured: list[R] = []
    for in_flight in plan.concurrency:
        for send in clients.values():
            await closed_loop(send, in_flight, plan.warmup)
        for index in range(plan.rounds):
            order = list(clients.items())
            if alternate and index % 2 == 1:
                order.reverse()
            for name, send in order:
                measured.append(await measure(name, send, in_flight))
    return measured
