"""Injected misbehaviour, per device token or for every message, one-shot or sticky."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from fcmsim.errors import ErrorCode


@dataclass(frozen=True)
class Fault:
    """An error answer instead of processing (`code`), or a delay before the answer, or
    both; `retry_after` adds that header (seconds)."""

    code: ErrorCode | None = None
    delay: float = 0.0
    retry_after: int | None = None
    message: str | None = None

    @classmethod
    def error(cls, code: ErrorCode | str, *, retry_after: int | None = None, message: str | None = None) -> Fault:
        return cls(ErrorCode(code), retry_after=retry_after, message=message)

    @classmethod
    def unavailable(cls, retry_after: int | None = None) -> Fault:
        return cls.error(ErrorCode.UNAVAILABLE, retry_after=retry_after)

    @classmethod
    def quota_exceeded(cls, retry_after: int | None = None) -> Fault:
        return cls.error(ErrorCode.QUOTA_EXCEEDED, retry_after=retry_after)

    @classmethod
    def internal(cls) -> Fault:
        return cls.error(ErrorCode.INTERNAL)

    @classmethod
    def unregistered(cls) -> Fault:
        return cls.error(ErrorCode.UNREGISTERED)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls(delay=seconds)


@dataclass
class InjectedFault:
    id: int
    fault: Fault
    token: str | None
    remaining: int | None
    """None: sticky until removed."""
    hits: int = field(default=0)


class FaultBook:
    def __init__(self) -> None:
        self._entries: list[InjectedFault] = []
        self._ids = itertools.count(1)

    def inject(self, fault: Fault, token: str | None = None, times: int | None = 1) -> InjectedFault:
        entry = InjectedFault(next(self._ids), fault, token, times)
        self._entries.append(entry)
        return entry

    def take(self, token: str) -> Fault | None:
        """The first fault for `token` (or for every token), used up once."""
        for entry in self._entries:
            if entry.token not in (None, token):
                continue
            entry.hits += 1
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._entries.remove(entry)
            return entry.fault
        return None

    def remove(self, entry: InjectedFault) -> None:
        if entry in self._entries:
            self._entries.remove(entry)

    def clear(self) -> None:
        self._entries.clear()

    @property
    def entries(self) -> list[InjectedFault]:
        return list(self._entries)
