"""Per-source token buckets, so a flood from one address cannot starve others."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["TokenBucketLimiter"]


class TokenBucketLimiter:
    """``rate`` messages per second per source, bursts up to ``burst``.

    Pure: the caller passes ``now``.  At most ``max_sources`` buckets are
    kept; the least recently seen source is forgotten first, which only
    ever gives that source a fresh (full) bucket.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str, now: float, cost: float = 1.0) -> bool:
        tokens, last = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[source] = (tokens, now)
        self._buckets.move_to_end(source)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
