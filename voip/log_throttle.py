"""An error that repeats, logged once per interval with how many times it happened.

A loop that fails on every turn while Redis is away (the ring-timeout poller five times a
second, the bus reader, every refused request) would otherwise flood the log with the same
line and bury the one that matters.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

LOG_INTERVAL = 10.0


class RepeatedLog:
    def __init__(self, logger: Any, event: str, *, interval: float = LOG_INTERVAL) -> None:
        self._log = logger
        self.event = event
        self.interval = interval
        self._count = 0
        self._last = float("-inf")

    def failed(self, *, traceback: bool = True, **fields: Any) -> None:
        """Count one occurrence; log it (with the count since the last line) if the last
        line is `interval` seconds old. Call it inside `except` to keep the traceback;
        `traceback=False` where the fields already say all there is (a known refusal)."""
        self._count += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self._log.warning(self.event, count=self._count, exc_info=traceback, **fields)
        self._count = 0

    def ok(self) -> None:
        """It works again: one line, with the failures not logged yet. Cheap when nothing
        failed, so loops call it on every good turn."""
        if self._last == float("-inf"):
            return
        self._log.info(self.event, recovered=True, count=self._count)
        self._count = 0
        self._last = float("-inf")


def repeated(logger_name: str, event: str, *, interval: float = LOG_INTERVAL) -> RepeatedLog:
    return RepeatedLog(structlog.get_logger(logger_name), event, interval=interval)
