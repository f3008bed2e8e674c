"""SIGTERM (and Ctrl-C) as a rolling deploy needs it: the node drains first, then uvicorn
shuts down, then the process exits 0 through its own cleanup.

uvicorn on its own stops listening at once, closes every WebSocket with 1012 before the
app hears anything, and re-raises the signal after shutdown, which kills the process
before `run`'s `finally` (the private Redis's stop) ever runs.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import structlog
import uvicorn

log = structlog.get_logger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        drain: Callable[[], Awaitable[None]],
        on_ready: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None and self.servers and self.servers[0].sockets:
            # The port bound, read back: PORT=0 works too.
            self._on_ready(self.servers[0].sockets[0].getsockname()[1])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Never recorded in uvicorn's captured signals: they would be raised again.
        if self._loop is None or not self.started:
            self.should_exit = True  # not serving yet: nothing to drain
        elif self._draining is None:
            self._loop.call_soon_threadsafe(self._start_drain, sig)
        elif sig == signal.SIGINT:
            self.force_exit = True  # Ctrl-C twice: stop now
        else:
            self.should_exit = True

    def _start_drain(self, sig: int) -> None:
        if self._draining is None:
            log.warning("node.signal", signal=signal.Signals(sig).name)
            self._draining = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("node.drain_failed")
        finally:
            self.should_exit = True
