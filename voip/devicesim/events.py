"""What a simulated app saw and did, in order, with times: the record tests assert on
and the demo narrates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    """Seconds since the log started."""
    device: str
    kind: str
    call_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def matches(self, kind: str | None, device: str | None, call_id: str | None, detail: dict[str, Any]) -> bool:
        return (
            (kind is None or self.kind == kind)
            and (device is None or self.device == device)
            and (call_id is None or self.call_id == call_id)
            and all(self.detail.get(k) == v for k, v in detail.items())
        )


Listener = Callable[[Event], None]


class EventLog:
    """One log may be shared by several phones, so a story reads as one timeline."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.events: list[Event] = []
        self._listeners: list[Listener] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    def now(self) -> float:
        return self._clock() - self.started

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def record(self, device: str, kind: str, call_id: str | None = None, /, **detail: Any) -> Event:
        event = Event(round(self.now(), 4), device, kind, call_id, detail)
        self.events.append(event)
        for listener in self._listeners:
            listener(event)
        for waiter in list(self._waiters):
            predicate, future = waiter
            if not future.done() and predicate(event):
                future.set_result(event)
        return event

    def find(
        self, kind: str | None = None, *, device: str | None = None, call_id: str | None = None, **detail: Any
    ) -> list[Event]:
        return [e for e in self.events if e.matches(kind, device, call_id, detail)]

    def kinds(self, *, device: str | None = None, call_id: str | None = None) -> list[str]:
        return [e.kind for e in self.find(device=device, call_id=call_id)]

    async def wait_for(
        self, kind: str, *, device: str | None = None, call_id: str | None = None, timeout: float = 5.0, **detail: Any
    ) -> Event:
        """The first matching event, already recorded or still to come."""
        for event in self.events:
            if event.matches(kind, device, call_id, detail):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (lambda e: e.matches(kind, device, call_id, detail), future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            seen = [(e.at, e.device, e.kind, e.call_id) for e in self.events[-15:]]
            raise AssertionError(
                f"no {kind} (device={device}, call_id={call_id}, {detail}) within {timeout}s; last: {seen}"
            ) from None
        finally:
            self._waiters.remove(waiter)
