"""Time, injected: wall-clock milliseconds (the unit of every time kept in Redis), a
monotonic clock and sleeping. The node is built with one `Clock` (`SYSTEM_CLOCK`); tests
build it with a `ManualClock` and move time themselves, so nothing waits for a ring
timeout in real time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time, ms since the epoch: what deadlines in Redis are measured in."""
        ...

    def monotonic(self) -> float:
        """Seconds, for intervals within this process."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def now_ms() -> int:
    return SYSTEM_CLOCK.now_ms()


class ManualClock:
    """Time moves only when `advance` is called; it wakes every sleeper then due. Starts
    at the real wall time, so what it writes to Redis looks like any other time."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._ms = SYSTEM_CLOCK.now_ms() if start_ms is None else start_ms
        self._monotonic = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._sleeping = asyncio.Condition()

    def now_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._monotonic + max(0.0, seconds), next(self._order), waker))
        async with self._sleeping:
            self._sleeping.notify_all()
        await waker

    async def sleepers(self, count: int = 1) -> None:
        """Until at least `count` tasks sleep on this clock (a loop reached its wait)."""
        async with self._sleeping:
            await self._sleeping.wait_for(lambda: self._pending() >= count)

    def _pending(self) -> int:
        return sum(1 for *_, waker in self._sleepers if not waker.done())

    def advance(self, ms: int) -> None:
        self._ms += ms
        self._monotonic += ms / 1000
        while self._sleepers and self._sleepers[0][0] <= self._monotonic:
            *_, waker = heapq.heappop(self._sleepers)
            if not waker.done():
                waker.set_result(None)
