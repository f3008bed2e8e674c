"""Every `messages:send` the simulator answered, in order, for tests and operators."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class RecordedMessage:
    index: int
    received_at: float
    project: str
    token: str | None
    body: Any
    """The request's JSON (None if it did not parse)."""
    status: int | None = None
    """None until answered."""
    error: str | None = None
    """The FCM error code (or Google status) of a refusal."""
    name: str | None = None
    """The message's name when accepted."""

    @property
    def data(self) -> dict[str, Any]:
        message = self.body.get("message") if isinstance(self.body, dict) else None
        data = message.get("data") if isinstance(message, dict) else None
        return data if isinstance(data, dict) else {}

    @property
    def android(self) -> dict[str, Any]:
        message = self.body.get("message") if isinstance(self.body, dict) else None
        android = message.get("android") if isinstance(message, dict) else None
        return android if isinstance(android, dict) else {}

    def view(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "received_at": int(self.received_at * 1000),
            "project": self.project,
            "token": self.token,
            "body": self.body,
            "status": self.status,
            "error": self.error,
            "name": self.name,
        }


Predicate = Callable[[RecordedMessage], bool]


class MessageLog:
    def __init__(self) -> None:
        self.messages: list[RecordedMessage] = []
        self._answered = asyncio.Event()

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, record: RecordedMessage) -> None:
        self.messages.append(record)

    def answered(self) -> None:
        self._answered.set()
        self._answered = asyncio.Event()

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0, since: int = 0) -> RecordedMessage:
        """The first answered message (index >= `since`) matching `predicate`, past or future."""
        async with asyncio.timeout(timeout):
            while True:
                for record in self.messages[since:]:
                    if record.status is not None and predicate(record):
                        return record
                await self._answered.wait()
