"""Injected misbehaviour, per device token or for every request, one-shot or sticky."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum

from apnsim.reasons import STATUS_OF, Reason


class FaultKind(StrEnum):
    REJECT = "reject"  # answer with a chosen status/reason instead of processing
    GOAWAY = "goaway"  # send GOAWAY, before or after answering the stream
    SILENT = "silent"  # never answer the stream
    DELAY = "delay"  # answer normally, after a delay
    RESET = "reset"  # close the TCP connection abruptly (RST)
    LATE_DELIVERY = "late-delivery"  # a stored push is handed over although expired


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int | None = None
    reason: str | None = None
    timestamp_ms: int | None = None
    """For 410 answers; ``None`` means "now" by the simulator's clock."""
    delay: float = 0.0
    goaway_reason: str | None = None
    goaway_error_code: int = 0
    answer_before_goaway: bool = True

    @classmethod
    def reject(cls, reason: Reason | str, status: int | None = None, timestamp_ms: int | None = None) -> Fault:
        if status is None:
            status = STATUS_OF[Reason(reason)]
        return cls(FaultKind.REJECT, status=status, reason=str(reason), timestamp_ms=timestamp_ms)

    @classmethod
    def unregistered(cls, timestamp_ms: int | None = None) -> Fault:
        return cls.reject(Reason.UNREGISTERED, timestamp_ms=timestamp_ms)

    @classmethod
    def expired_token(cls, timestamp_ms: int | None = None) -> Fault:
        return cls.reject(Reason.EXPIRED_TOKEN, timestamp_ms=timestamp_ms)

    @classmethod
    def bad_device_token(cls) -> Fault:
        return cls.reject(Reason.BAD_DEVICE_TOKEN)

    @classmethod
    def too_many_requests(cls) -> Fault:
        return cls.reject(Reason.TOO_MANY_REQUESTS)

    @classmethod
    def internal_server_error(cls) -> Fault:
        return cls.reject(Reason.INTERNAL_SERVER_ERROR)

    @classmethod
    def service_unavailable(cls) -> Fault:
        return cls.reject(Reason.SERVICE_UNAVAILABLE)

    @classmethod
    def shutdown(cls) -> Fault:
        """503 Shutdown on the stream."""
        return cls.reject(Reason.SHUTDOWN)

    @classmethod
    def goaway(cls, reason: str = "Shutdown", *, answer_first: bool = True, error_code: int = 0) -> Fault:
        """GOAWAY with ``{"reason": ...}`` as additional data; with ``answer_first=False``
        the request is left unprocessed (its stream id above last-stream-id)."""
        return cls(
            FaultKind.GOAWAY, goaway_reason=reason, goaway_error_code=error_code, answer_before_goaway=answer_first
        )

    @classmethod
    def silent(cls) -> Fault:
        return cls(FaultKind.SILENT)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls(FaultKind.DELAY, delay=seconds)

    @classmethod
    def connection_reset(cls) -> Fault:
        return cls(FaultKind.RESET)

    @classmethod
    def late_delivery(cls) -> Fault:
        return cls(FaultKind.LATE_DELIVERY)


_ids = itertools.count(1)


@dataclass(eq=False)
class InjectedFault:
    fault: Fault
    token: str | None
    """``None`` applies to every request (or every device, for late delivery)."""
    remaining: int | None
    """Requests left before it wears off; ``None`` is sticky."""
    id: int = field(default_factory=lambda: next(_ids))
    fired: int = 0

    @property
    def active(self) -> bool:
        return self.remaining is None or self.remaining > 0


class FaultBook:
    def __init__(self) -> None:
        self._entries: list[InjectedFault] = []

    def inject(self, fault: Fault, token: str | None = None, times: int | None = 1) -> InjectedFault:
        if times is not None and times < 1:
            raise ValueError("times must be a positive count, or None for a sticky fault")
        entry = InjectedFault(fault, token.lower() if token else None, times)
        self._entries.append(entry)
        return entry

    def remove(self, entry: InjectedFault) -> None:
        if entry in self._entries:
            self._entries.remove(entry)

    def clear(self) -> None:
        self._entries.clear()

    @property
    def entries(self) -> list[InjectedFault]:
        return list(self._entries)

    def take(self, token: str | None, *, late_delivery: bool = False) -> Fault | None:
        """Consume the fault that applies to a request for *token*; token-specific ones first."""
        token = token.lower() if token else None
        candidates = [
            e
            for e in self._entries
            if e.active
            and (e.fault.kind == FaultKind.LATE_DELIVERY) == late_delivery
            and (e.token is None or e.token == token)
        ]
        if not candidates:
            return None
        entry = next((e for e in candidates if e.token is not None), candidates[0])
        entry.fired += 1
        if entry.remaining is not None:
            entry.remaining -= 1
            if entry.remaining == 0:
                self._entries.remove(entry)
        return entry.fault
