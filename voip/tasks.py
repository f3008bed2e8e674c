"""Background tasks that stop when told to."""

from __future__ import annotations

import asyncio


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait for it to end.

    Cancelled again until it ends: redis-py can swallow a cancellation that lands inside
    one of its reads, and a node must never hang on shutdown because of that."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
