"""How much CPU other processes took during the run: the figures are only as clean as the machine."""

from __future__ import annotations

import os
import resource
import time


def _busy_seconds() -> float:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    # Children count once waited for: call after every node, Redis and wrk has exited.
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class Noise:
    def __init__(self) -> None:
        self._busy, self._own, self._wall = _busy_seconds(), _own_seconds(), time.monotonic()

    def report(self) -> str:
        other = max(0.0, (_busy_seconds() - self._busy) - (_own_seconds() - self._own))
        wall = time.monotonic() - self._wall
        share = other / (wall * (os.cpu_count() or 1))
        warning = "  (a busy machine: compare ratios, not absolute figures)" if share > 0.05 else ""
        return f"# other processes used {other:.0f} CPU-s in {wall:.0f}s ({share:.0%} of the machine){warning}"
