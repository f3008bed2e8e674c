"""A log of every request the simulator saw, with awaitable look-ups for tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apnsim.faults import Fault


@dataclass(eq=False)
class RecordedRequest:
    index: int
    received_at: float
    connection_id: int
    stream_id: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    token: str | None
    apns_id: str
    """As echoed in the response: the client's, or the one the simulator generated."""
    fault: Fault | None = None
    key_id: str | None = None
    """The provider key that signed the request's token, once verified."""
    team_id: str | None = None
    status: int | None = None
    reason: str | None = None
    timestamp_ms: int | None = None
    answered_at: float | None = None
    _answered: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def topic(self) -> str | None:
        return self.header("apns-topic")

    @property
    def push_type(self) -> str | None:
        return self.header("apns-push-type")

    @property
    def payload(self) -> Any:
        """The body parsed as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError):
            return None

    @property
    def answered(self) -> bool:
        return self.status is not None

    async def wait_answered(self, timeout: float = 5.0) -> RecordedRequest:
        await asyncio.wait_for(self._answered.wait(), timeout)
        return self


Predicate = Callable[[RecordedRequest], bool]


class RequestLog:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._waiters: list[tuple[Predicate, int, asyncio.Future[RecordedRequest]]] = []

    def __len__(self) -> int:
        return len(self.requests)

    def add(self, request: RecordedRequest) -> None:
        self.requests.append(request)
        self._notify(request)

    def answered(
        self, request: RecordedRequest, status: int, reason: str | None, timestamp_ms: int | None, at: float
    ) -> None:
        request.status, request.reason = status, reason
        request.timestamp_ms, request.answered_at = timestamp_ms, at
        request._answered.set()
        self._notify(request)

    def _notify(self, request: RecordedRequest) -> None:
        for entry in list(self._waiters):
            predicate, since, future = entry
            if future.done():
                self._waiters.remove(entry)
            elif request.index >= since and predicate(request):
                future.set_result(request)
                self._waiters.remove(entry)

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0, since: int = 0) -> RecordedRequest:
        """The first request with index >= *since* matching *predicate*, waiting if need be.

        The predicate is re-evaluated when a request arrives and again when it is
        answered, so it may look at ``status``/``reason``.
        """
        for request in self.requests[since:]:
            if predicate(request):
                return request
        future: asyncio.Future[RecordedRequest] = asyncio.get_running_loop().create_future()
        entry = (predicate, since, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
