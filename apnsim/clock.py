"""Wall clock abstraction: expirations, JWT ages and 410 timestamps read it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds since the epoch, like :func:`time.time`."""


class ManualClock:
    """A clock that only moves when told to, so tests can cross expirations instantly."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, now: float) -> None:
        self._now = now
