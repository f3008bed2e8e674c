"""Counters for the operators' page, computed from call timelines: outcomes, push results,
how long a woken device took to ask for the call's status, and late pushes caught."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from voip.calls import CallState

FINAL_STATES = frozenset(state.value for state in CallState if state.is_final)
# Upper bounds (ms) of the push-to-status-check delay histogram; the last bucket is open.
DELAY_BOUNDS_MS = (250, 500, 1000, 2000, 5000, 10000, 30000)


def push_result(entry: dict[str, Any]) -> str:
    """One label per push answer: APNs's reason when it gave one."""
    if reason := entry.get("reason"):
        return str(reason)
    if entry.get("status") == 200:
        return "accepted"
    return str(entry.get("outcome") or entry.get("status") or "unknown")


def _delay_label(index: int) -> str:
    def show(ms: int) -> str:
        return f"{ms} ms" if ms < 1000 else f"{ms // 1000} s"

    if index == 0:
        return f"< {show(DELAY_BOUNDS_MS[0])}"
    if index == len(DELAY_BOUNDS_MS):
        return f"≥ {show(DELAY_BOUNDS_MS[-1])}"
    return f"{show(DELAY_BOUNDS_MS[index - 1])}–{show(DELAY_BOUNDS_MS[index])}"


def _percentile(ordered: list[int], fraction: float) -> int | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def push_to_status_delays(timeline: Iterable[dict[str, Any]]) -> list[int]:
    """For each accepted VoIP push, the time until the next status check from the same device
    (or from any device, when the push entry names none)."""
    waiting: dict[str, int] = {}
    delays: list[int] = []
    for entry in timeline:
        event = entry.get("event")
        # Only an accepted VoIP push wakes the app to ask; alerts and refused pushes don't.
        accepted_voip = entry.get("status", 200) == 200 and entry.get("push_type", "voip") == "voip"
        if event == "push" and isinstance(entry.get("at"), int) and accepted_voip:
            waiting.setdefault(str(entry.get("device", "")), entry["at"])
        elif event == "status_check" and isinstance(entry.get("at"), int):
            device = str(entry.get("device", ""))
            pushed = waiting.pop(device, None)
            if pushed is None:
                pushed = waiting.pop("", None)
            if pushed is not None:
                delays.append(max(0, entry["at"] - pushed))
    return delays


def answers_a_push(entry: dict[str, Any]) -> bool:
    """A status check a push caused: made with the push's capability, or naming the push.
    A bearer check without one is the app (or a person) asking on its own."""
    return entry.get("via") == "capability" or bool(entry.get("push_id"))


def caught_late(entry: dict[str, Any]) -> bool:
    """A push that arrived after its call ended, and would have rung a ghost call, ended
    by the verdict instead."""
    return entry.get("event") == "status_check" and entry.get("state") in FINAL_STATES and answers_a_push(entry)


def summarize(calls: list[dict[str, Any]], timelines: list[list[dict[str, Any]]]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter(call["state"] for call in calls)
    pushes: Counter[str] = Counter()
    delays: list[int] = []
    late_checks = 0
    late_calls = 0
    for timeline in timelines:
        pushes.update(push_result(e) for e in timeline if e.get("event") == "push")
        delays += push_to_status_delays(timeline)
        late = sum(1 for e in timeline if caught_late(e))
        late_checks += late
        late_calls += bool(late)
    buckets = [0] * (len(DELAY_BOUNDS_MS) + 1)
    for delay in delays:
        buckets[sum(delay >= bound for bound in DELAY_BOUNDS_MS)] += 1
    ordered = sorted(delays)
    return {
        "calls": len(calls),
        "outcomes": dict(sorted(outcomes.items())),
        "push_results": dict(sorted(pushes.items())),
        "push_to_status_ms": {
            "count": len(ordered),
            "p50": _percentile(ordered, 0.5),
            "p95": _percentile(ordered, 0.95),
            "max": ordered[-1] if ordered else None,
            "buckets": [{"label": _delay_label(i), "count": n} for i, n in enumerate(buckets)],
        },
        "late_pushes_caught": {"status_checks": late_checks, "calls": late_calls},
    }
