"""Percentiles and the table lines the bench prints."""

from __future__ import annotations

import math
import statistics


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples, an observed value rather than a blend."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else math.nan
