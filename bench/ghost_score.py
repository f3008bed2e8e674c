"""The ghost-call experiment's judge (pure): from what each phone showed and what each call
really did, the ghost rings, lost calls, wrong outcomes and cancellation pushes, against
issue 16's goals. Times are simulated seconds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

REPORT = 0.05
"""Seconds the phone takes to report an end to CallKit, on top of its status round trip."""
SLACK = 0.002
"""Simulated time has millisecond steps: what ends within them ended at once."""

# The CallKit reason a callee's device must show, by the call's final state, when
# another device (or the caller, or the deadline) ended it for this one.
EXPECTED = {
    "cancelled": "remoteEnded",
    "missed": "unanswered",
    "failed": "failed",
}


@dataclass(frozen=True, slots=True)
class Truth:
    """What the call did, as Redis holds it."""

    call_id: str
    state: str
    over_at: float
    """When it stopped ringing: answered, hung up, declined, missed."""
    answered_by: str | None = None
    declined_by: str | None = None


@dataclass(frozen=True, slots=True)
class Ring:
    """A call a phone showed as ringing, from its report to its end."""

    call_id: str
    device_id: str
    start: float
    end: float | None
    how: str
    """What ended it: "verdict", "push", "frame", "deadline", "answered" (connected
    here), "user" (declined here), "answer-failed", None-like "open" if never."""
    reason: str | None
    bound: float
    """The goal for this ring: its phone's status round trip plus the report."""
    expires_at: float
    status_reachable: bool
    socket_lost: float | None = None
    """When the service cut the phone's socket while this call rang (a node killed)."""


@dataclass(frozen=True, slots=True)
class Cancellation:
    call_id: str
    device_id: str
    needed: bool
    knew_by: str = ""
    """For a wasted one: how the device had learned the outcome (frame, verdict, user...)."""


@dataclass(slots=True)
class Miss:
    call_id: str
    device_id: str
    what: str
    why: str

    def line(self) -> str:
        return f"{self.what}: call {self.call_id} device {self.device_id}: {self.why}"


@dataclass(slots=True)
class Score:
    condition: str
    calls: int = 0
    late_deliveries: int = 0
    ghosts: list[float] = field(default_factory=list)
    ghosts_over_goal: int = 0
    deadline_ends: int = 0
    lost: int = 0
    wrong: int = 0
    cancellations_needed: int = 0
    cancellations_wasted: int = 0
    misses: list[Miss] = field(default_factory=list)
    wasted_by: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What the condition did (nodes killed, failovers), for the report."""

    @property
    def ok(self) -> bool:
        return self.ghosts_over_goal == 0 and self.lost == 0 and self.wrong == 0  # -1: the run failed

    def percentile(self, p: float) -> float:
        if not self.ghosts:
            return 0.0
        ordered = sorted(self.ghosts)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def over_for(truth: Truth, device_id: str) -> float | None:
    """When the call was over for this device (None: never: it answered here)."""
    if truth.answered_by == device_id:
        return None
    return truth.over_at


def expected_reason(truth: Truth, device_id: str) -> str | None:
    if truth.answered_by is not None and truth.answered_by != device_id:
        return "answeredElsewhere"
    if truth.declined_by is not None and truth.declined_by != device_id:
        return "declinedElsewhere"
    return EXPECTED.get(truth.state)


def score(
    condition: str,
    truths: Sequence[Truth],
    rings: Iterable[Ring],
    reachable: dict[str, set[str]],
    cancellations: Iterable[Cancellation],
    late_deliveries: int,
) -> Score:
    result = Score(condition, calls=len(truths), late_deliveries=late_deliveries)
    by_call = {t.call_id: t for t in truths}
    rang_live: set[str] = set()
    for ring in rings:
        truth = by_call.get(ring.call_id)
        if truth is None:  # refused, or gone from Redis: the experiment notes those calls
            continue
        over = over_for(truth, ring.device_id)
        if over is None or ring.start < over:
            rang_live.add(ring.call_id)
        if over is None:
            continue
        end = ring.end if ring.end is not None else float("inf")
        ghost = end - max(ring.start, over)
        if ring.how == "deadline":
            result.deadline_ends += 1
        if ghost > SLACK:
            result.ghosts.append(ghost)
            if ring.status_reachable and ghost > ring.bound + REPORT + SLACK:
                result.ghosts_over_goal += 1
                result.misses.append(
                    Miss(
                        ring.call_id,
                        ring.device_id,
                        "ghost",
                        f"rang {ghost:.3f} s after the call was over ({ring.how}){_why(ring, over)}",
                    )
                )
            elif not ring.status_reachable and end > ring.expires_at + SLACK:
                result.ghosts_over_goal += 1
                result.misses.append(
                    Miss(
                        ring.call_id, ring.device_id, "ghost", f"rang past expires_at by {end - ring.expires_at:.3f} s"
                    )
                )
            if truth.answered_by is not None and ghost > ring.bound + REPORT + SLACK and ring.status_reachable:
                result.wrong += 1
                result.misses.append(
                    Miss(
                        ring.call_id,
                        ring.device_id,
                        "wrong",
                        f"rang on {ghost:.3f} s after {truth.answered_by} answered{_why(ring, over)}",
                    )
                )
        if ring.how in ("verdict", "push", "frame"):
            expected = expected_reason(truth, ring.device_id)
            if expected is not None and ring.reason != expected:
                result.wrong += 1
                result.misses.append(
                    Miss(
                        ring.call_id,
                        ring.device_id,
                        "wrong",
                        f"CallKit ended it as {ring.reason} ({ring.how}); the call was {truth.state}, so {expected}",
                    )
                )
    for truth in truths:
        if reachable.get(truth.call_id) and truth.call_id not in rang_live:
            result.lost += 1
            devices = ",".join(sorted(reachable[truth.call_id]))
            result.misses.append(Miss(truth.call_id, devices, "lost", f"{truth.state}; reachable, never rang live"))
    for cancellation in cancellations:
        if cancellation.needed:
            result.cancellations_needed += 1
        else:
            result.cancellations_wasted += 1
            result.wasted_by[cancellation.knew_by] = result.wasted_by.get(cancellation.knew_by, 0) + 1
    return result


def _why(ring: Ring, over: float) -> str:
    if ring.socket_lost is not None and ring.socket_lost <= over:
        return (
            f": its socket was cut {over - ring.socket_lost:.3f} s before the call was over (a node"
            " killed); the service still counted it connected, so no push; it learned at its reconnect"
        )
    return ""


HEADER = (
    "| condition | calls | pushes late | ghost rings | ghost p50 / p99 / max (s) | over goal | "
    "ended at expires_at | lost | wrong | cancellations needed / wasted |"
)


def row(s: Score) -> str:
    return (
        f"| {s.condition} | {s.calls} | {s.late_deliveries} | {len(s.ghosts)} | "
        f"{s.percentile(50):.3f} / {s.percentile(99):.3f} / {max(s.ghosts, default=0.0):.3f} | "
        f"{s.ghosts_over_goal} | {s.deadline_ends} | {s.lost} | {s.wrong} | "
        f"{s.cancellations_needed} / {s.cancellations_wasted} |"
    )


def table(scores: Sequence[Score]) -> list[str]:
    return [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|", *(row(s) for s in scores)]
