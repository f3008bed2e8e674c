"""The ghost-call experiment's population, drawn from one seed (pure: no I/O, no clock).

Every call has a caller of its own and a callee of its own with one to three devices, so
that calls never interact through a shared user: what one call shows is that call's
doing. Times are simulated seconds from the call's start; nothing here waits."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Literal

Mode = Literal["foreground", "background", "asleep", "no_network"]
Fate = Literal["immediate", "late", "delayed", "duplicate", "lossy"]
Action = Literal["answer", "decline", "ignore"]

RING_TIMEOUT = 45.0
CALL_SPACING = 4.0
"""Seconds of simulated time between two calls' starts: calls overlap, as in life."""


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device_id: str
    mode: Mode
    """foreground: the app is open (WebSocket); background: suspended, online;
    asleep: offline until `wake_after`; no_network: asleep, and at wake its requests
    fail for `net_after_wake` more seconds (woken by the push, no route for HTTP yet)."""
    wake_after: float
    net_after_wake: float
    fate: Fate
    """What APNs does with pushes to this token: hands them over at once; is late
    (it cannot reach the phone for `apns_delay` s, keeping one push, the newest: a later
    push displaces it); holds each push in flight for a delay of its own, seconds to
    hours, where no later push displaces it and order is not kept (`delayed`); hands
    each over twice (again `apns_delay` s later); loses each one with p = 1/2."""
    apns_delay: float
    ignores_expiration: bool
    """APNs hands over a stored push although its apns-expiration passed (seen in the field)."""
    action: Action
    act_after: float
    rtt: float
    """The phone's HTTP round trip to the service, seconds."""
    reconnect_after: float
    """Seconds the app takes to connect again when its socket drops."""
    seed: int


@dataclass(frozen=True, slots=True)
class CallPlan:
    index: int
    call_id: str
    caller: str
    callee: str
    start_at: float
    hang_up_after: float | None
    """Seconds after the start the caller gives up while it rings; None: never."""
    talk: float
    """Seconds an answered call lasts before the caller hangs up."""
    devices: tuple[DevicePlan, ...]


def offline_for(rng: random.Random) -> float:
    """Seconds a sleeping phone stays offline: seconds, minutes or hours."""
    scale = rng.random()
    if scale < 0.4:
        return rng.uniform(1, 30)
    if scale < 0.8:
        return rng.uniform(60, 1800)
    return rng.uniform(3600, 6 * 3600)


def _device(rng: random.Random, call: int, number: int) -> DevicePlan:
    mode: Mode = rng.choices(("foreground", "background", "asleep", "no_network"), (25, 35, 30, 10))[0]
    fate: Fate = rng.choices(("immediate", "late", "delayed", "duplicate", "lossy"), (60, 12, 13, 10, 5))[0]
    action: Action = rng.choices(("answer", "decline", "ignore"), (35, 15, 50))[0]
    asleep = mode in ("asleep", "no_network")
    return DevicePlan(
        device_id=f"c{call}-d{number}",
        mode=mode,
        wake_after=offline_for(rng) if asleep else 0.0,
        net_after_wake=rng.uniform(2, 30) if mode == "no_network" else 0.0,
        fate=fate,
        apns_delay=offline_for(rng) if fate in ("late", "duplicate") else 0.0,
        ignores_expiration=rng.random() < 0.5,
        action=action,
        act_after=rng.uniform(1, 8),
        rtt=rng.uniform(0.05, 0.6),
        reconnect_after=rng.uniform(0.2, 2.0),
        seed=rng.randrange(2**32),
    )


def population(calls: int, seed: int) -> list[CallPlan]:
    rng = random.Random(seed)
    plans: list[CallPlan] = []
    for index in range(calls):
        hang_up = rng.choices(("early", "late", "never"), (30, 30, 40))[0]
        hang_up_after = {
            "early": rng.uniform(0.5, 5),
            "late": rng.uniform(10, RING_TIMEOUT - 1),
            "never": None,
        }[hang_up]
        count = rng.choices((1, 2, 3), (50, 35, 15))[0]
        plans.append(
            CallPlan(
                index=index,
                call_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                caller=f"caller{index}",
                callee=f"callee{index}",
                start_at=index * CALL_SPACING + rng.uniform(0, CALL_SPACING),
                hang_up_after=hang_up_after,
                talk=rng.uniform(5, 60),
                devices=tuple(_device(rng, index, number) for number in range(count)),
            )
        )
    return plans
