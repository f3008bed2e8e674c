"""Background tasks: named, tracked, every failure logged, and awaited on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait for it to end.

    Cancelled again until it ends: redis-py can swallow a cancellation that lands inside
    one of its reads, and a node must never hang on shutdown because of that."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


def log_failure(task: asyncio.Task[Any]) -> None:
    """A done-callback: retrieve the task's exception and log it under the task's name."""
    if task.cancelled():
        return
    failure = task.exception()
    if failure is not None:
        log.error("task.failed", task=task.get_name(), exc_info=failure)


class BackgroundTasks:
    """Work that nobody awaits: each task has a name, its exception is retrieved and
    logged when it ends (never "Task exception was never retrieved"), and shutdown can
    wait for what is still running."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._running: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._running)

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=f"{self.kind}:{name}")
        self._running.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        log_failure(task)

    async def wait(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for every task, those spawned meanwhile too;
        return how many are still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._running), timeout=left)
        return len(self._running)

    async def cancel(self) -> None:
        for task in list(self._running):
            log.warning("task.abandoned", task=task.get_name())
            await stop_task(task)


async def retry_bounded(
    step: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    within: float,
    first_pause: float = 0.1,
    max_pause: float = 2.0,
    **context: Any,
) -> T:
    """Run `step` until it succeeds, retrying the errors in `retry_on` with a growing
    pause for up to `within` seconds; then the last error is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pause = first_pause
    attempt = 1
    while True:
        try:
            return await step()
        except retry_on as exc:
            if loop.time() + pause > deadline:
                raise
            log.warning(f"{what}.retrying", attempt=attempt, error=type(exc).__name__, **context)
            await asyncio.sleep(pause)
            pause = min(pause * 2, max_pause)
            attempt += 1
