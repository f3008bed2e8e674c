"""Timeline entries written for the whole node in batches: the "delivered" entry of each
frame a device's socket wrote about a call, and the SIP legs' notes of what they sent and
received (voip/sipcalls/legs.py).

A writer hands its entry over and goes on at once: a socket's next frame, a SIP leg's
next message, never waits on Redis, and one pipeline carries every entry queued
meanwhile, whatever the sockets and calls (one round trip per call set-up fewer than one
per frame; three per full SIP call fewer than one per note; docs/benchmarks.md). An
entry reaches the timeline up to FLUSH_INTERVAL after it was recorded, so it may follow
entries written after it; its `at` says when it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from voip import metrics
from voip.log_throttle import RepeatedLog
from voip.redis_pool import UNAVAILABLE
from voip.stores import CallStore
from voip.tasks import log_failure, retry_bounded

log = structlog.get_logger(__name__)

# A batch is written once this many entries wait, or FLUSH_INTERVAL seconds after the first.
FLUSH_ENTRIES = 64
FLUSH_INTERVAL = 0.02
# Entries waiting while Redis is away; beyond, new ones are dropped (and counted).
QUEUE_LIMIT = 10_000
# Seconds a batch is retried while Redis is away, as a push's bookkeeping is.
RETRY_WINDOW = 10.0


class DeliveryLog:
    def __init__(
        self,
        calls: CallStore,
        *,
        flush_entries: int = FLUSH_ENTRIES,
        flush_interval: float = FLUSH_INTERVAL,
        queue_limit: int = QUEUE_LIMIT,
        retry_window: float = RETRY_WINDOW,
    ) -> None:
        self._calls = calls
        self.flush_entries = flush_entries
        self.flush_interval = flush_interval
        self.queue_limit = queue_limit
        self.retry_window = retry_window
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._waiting = asyncio.Event()  # an entry is queued
        self._full = asyncio.Event()  # flush_entries are queued, or stop() wants them now
        # One batch at a time: flush() returns only once everything queued before it is written.
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._dropped = RepeatedLog(log, "delivery_log.dropped")
        self._unwritten = RepeatedLog(log, "delivery_log.write_failed")

    def record(self, call_id: str, entry: dict[str, Any]) -> None:
        """Queue `entry` for the call's timeline; never waits."""
        if len(self._queue) >= self.queue_limit:
            metrics.DELIVERY_LOG_DROPPED.labels("queue_full").inc()
            self._dropped.failed(queued=len(self._queue))
            return
        self._queue.append((call_id, entry))
        self._waiting.set()
        if len(self._queue) >= self.flush_entries:
            self._full.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-log")
        self._task.add_done_callback(log_failure)

    async def _run(self) -> None:
        while not self._stopping:
            await self._waiting.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued, retried while Redis is away for up to `retry_window`
        seconds; then that batch is dropped, counted and logged."""
        async with self._writing:
            batch, self._queue = self._queue, []
            self._waiting.clear()
            self._full.clear()
            if not batch:
                return
            try:
                await retry_bounded(
                    lambda: self._calls.append_timelines(batch),
                    what="delivery_log.flush",
                    retry_on=UNAVAILABLE,
                    within=self.retry_window,
                    entries=len(batch),
                )
            except Exception:
                metrics.DELIVERY_LOG_DROPPED.labels("unwritten").inc(len(batch))
                self._unwritten.failed(entries=len(batch))
            else:
                self._unwritten.ok()

    async def stop(self) -> None:
        """Write what is queued, then stop. Never cancelled half-way: a batch taken off
        the queue is written (or given up after `retry_window`) before the task ends."""
        self._stopping = True
        self._waiting.set()
        self._full.set()
        if self._task is not None:
            await asyncio.wait({self._task})  # a failure is logged by log_failure
            self._task = None
        await self.flush()
