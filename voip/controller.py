"""The call controller: what happens when a device starts, answers, declines or ends a
call, or the system acts (a ring timeout, a SIP leg that failed). It applies the change
in Redis (voip/stores/) and tells every device concerned, on whatever node it is connected
(bus.py). It is the only place that changes a call: the SIP gateway acts through it too.

It holds no call state of its own: any node can pick up any call at any step.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from voip import metrics
from voip.bus import Addressed, Bus
from voip.call_pushes import TRANSIENT_REDIS_ERRORS, CallPushes
from voip.calls import CALLER_REASON, FINAL_REASON, NOTICES, Action, CallState
from voip.clock import Clock
from voip.display_names import display_name
from voip.history import Refusal
from voip.log_throttle import RepeatedLog
from voip.protocol import FrameType
from voip.stores import CalleeLimits, CalleeUnavailable, CallError, CallRecord, CallStore, Transition
from voip.tasks import retry_bounded, stop_task
from voip.webhooks.events import EventType
from voip.webhooks.hook import CallHook, Decision

log = structlog.get_logger(__name__)
# Seconds a transition's frames are retried while Redis fails over; the status endpoint and
# the pushes tell a device that missed them.
ANNOUNCE_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    device_id: str


class CallRejected(CallError):
    """The call hook (voip/webhooks/hook.py) refused the call, or gave no answer under
    VOIP_CALL_HOOK_FAILURE=closed. `reason`: what the app's backend said, if anything.
    The call is recorded (failed, reason call_rejected); nothing rang, no push left."""

    def __init__(self, call_id: str, reason: str | None) -> None:
        super().__init__("call_rejected")
        self.call_id = call_id
        self.reason = reason


# The webhook event's reason for a call the hook refused.
REJECTED = "call_rejected"


class OutboundCallees(Protocol):
    """Reaches callees that are not app users, e.g. `sip:` URIs (the SIP gateway)."""

    def leg_for(self, callee: str) -> str | None:
        """The device id of the leg that will ring `callee`, or None if it is an app user."""
        ...

    async def place(self, call: CallRecord, leg_device: str, sdp: str | None) -> None:
        """Start ringing the callee; the leg then acts on the call as the callee's device."""
        ...


class NoOutbound:
    """Every callee is an app user (no SIP on this node)."""

    def leg_for(self, callee: str) -> str | None:
        return None

    async def place(self, call: CallRecord, leg_device: str, sdp: str | None) -> None:
        raise AssertionError("no leg was named, so none is placed")


class CallController:
    def __init__(
        self,
        calls: CallStore,
        limits: CalleeLimits,
        bus: Bus,
        *,
        node: str,
        pushes: CallPushes,
        clock: Clock,
        outbound: Callable[[CallController], OutboundCallees] | None = None,
        ring_timeout: float,
        max_ringing_per_callee: int = 3,
        calls_per_callee_per_minute: int = 20,
        hook: CallHook | None = None,
    ) -> None:
        self.calls = calls
        self.limits = limits
        self.bus = bus
        self.node = node
        self.ring_timeout_ms = int(ring_timeout * 1000)
        self.max_ringing_per_callee = max_ringing_per_callee
        self.calls_per_callee_per_minute = calls_per_callee_per_minute
        self.pushes = pushes
        self.clock = clock
        # VOIP_CALL_HOOK_URL: asked before anything rings.
        self.hook = hook
        # Built from the controller, since it acts on calls through it (the SIP gateway).
        self.outbound: OutboundCallees = outbound(self) if outbound is not None else NoOutbound()

    async def start_call(
        self,
        caller: Caller,
        callee: str,
        call_id: str | None = None,
        *,
        sdp: str | None = None,
        caller_name: str | None = None,
        custom: dict[str, Any] | None = None,
        source: Literal["ws", "sip"] = "ws",
        on_started: Callable[[CallRecord], Awaitable[None]] | None = None,
    ) -> CallRecord:
        """`sdp` is the caller's offer, passed to the callee's devices in `call.incoming`.
        `caller_name`: the name the caller may be shown by, already chosen by who may
        choose it (the token's claim, a trusted client or SIP network); the call hook's
        answer overrides it. `custom`: the app's own data, to `call.incoming` and the push.
        `on_started` gets the call once it exists (already missed if nobody can take it)
        and before any frame about it is published: the caller's reply goes out first.
        Raises CallRejected when the call hook refuses the call."""
        if callee == caller.user_id:
            raise CallError("invalid_callee")
        call_id = call_id or str(uuid.uuid4())
        leg = self.outbound.leg_for(callee)
        created_at = self.clock.now_ms()
        ring_deadline = created_at + self.ring_timeout_ms
        name = display_name(caller_name, caller.user_id)
        # Before anything rings or any push leaves: a flood of calls to one callee must
        # not become a flood of pushes to their phone. Raises CallRefused. The callee's
        # availability is read in the same step (do-not-disturb, busy).
        try:
            devices, online = await self._admit(caller, callee, call_id, created_at, ring_deadline, reach=leg is None)
        except CalleeUnavailable as exc:
            return await self._turned_away(
                caller, callee, call_id, Refusal(exc.reason), name, created_at, ring_deadline, on_started
            )
        if self.hook is not None:
            # After the limits: a flood of calls to one callee is not a flood of requests
            # to the app's backend either.
            decision = await self.hook.decide(
                call_id,
                caller_user=caller.user_id,
                caller_device=caller.device_id,
                callee=callee,
                source=source,
                custom=custom,
            )
            if not decision.ring:
                await self._record_rejected(caller, callee, call_id, created_at, ring_deadline, caller_name, decision)
                raise CallRejected(call_id, decision.reason)
            if decision.caller_name:
                caller_name = decision.caller_name
                name = display_name(caller_name, caller.user_id)
            if decision.custom is not None:
                custom = decision.custom
        pushes: dict[str, dict[str, Any]] = {}
        if leg is not None:
            targets = [leg]
        else:
            targets = sorted(set(devices) | online)
            pushes = self.pushes.addresses(devices)
        incoming: dict[str, Any] = {
            "type": FrameType.CALL_INCOMING,
            "call_id": call_id,
            "caller": caller.user_id,
            "caller_name": name,
            "ring_deadline": ring_deadline,
            "server_time": created_at,
        }
        if sdp is not None:
            incoming["sdp"] = sdp
        if custom is not None:
            incoming["custom"] = custom
        # The callee's devices are told from inside the script that creates the call:
        # no round trip between "the call exists" and "its devices know".
        announce = (self.bus.channel(callee), self.bus.envelope(incoming)) if targets and leg is None else None
        created = await self.calls.create(
            call_id,
            caller_user=caller.user_id,
            caller_device=caller.device_id,
            callee_user=callee,
            ring_deadline=ring_deadline,
            node=self.node,
            targets=targets,
            created_at=created_at,
            pushes=pushes,
            caller_name=name,
            announce=announce,
        )
        if not created:
            # The existing call holds its own place in the callee's counts, if any.
            raise CallError("call_exists")
        call = CallRecord(
            call_id=call_id,
            state=CallState.RINGING,
            caller_user=caller.user_id,
            caller_device=caller.device_id,
            callee_user=callee,
            created_at=created_at,
            ring_deadline=ring_deadline,
            origin_node=self.node,
            caller_name=name,
            retention=self.calls.retention,
        )
        metrics.calls_counter(CallState.RINGING.value, "").inc()
        log.info("call.created", call_id=call_id, caller=caller.user_id, callee=callee, targets=len(targets))
        if not targets:
            # Nobody to ring: the call is missed now rather than after a silent ring timeout.
            # Told to the caller only after its reply, which names the call.
            transition = await self.calls.transition(
                call_id, Action.TIMEOUT, node=self.node, note={"why": "no reachable device"}, now=self.clock.now_ms()
            )
            if on_started is not None:
                await on_started(transition.call)
            await self.announce(transition)
            return transition.call
        if on_started is not None:
            await on_started(call)
        if leg is not None:
            await self.outbound.place(call, leg, sdp)
            return call
        if pushes:
            # The pushes leave the moment the call exists, in the background: a phone
            # asleep is the common case, and nothing here waits for APNs.
            self.pushes.invite(call, pushes, call.caller_name, custom)
        return call

    async def _admit(
        self, caller: Caller, callee: str, call_id: str, created_at: int, ring_deadline: int, *, reach: bool
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """CalleeLimits.admit; a "busy" that names only calls no longer answered (their
        end never reached the in-call set) forgets them and asks once more."""
        for attempt in (1, 2):
            try:
                return await self.limits.admit(
                    call_id,
                    callee,
                    now=created_at,
                    ring_deadline=ring_deadline,
                    max_ringing=self.max_ringing_per_callee,
                    per_minute=self.calls_per_callee_per_minute,
                    reach=reach,
                    caller_user=caller.user_id,
                )
            except CalleeUnavailable as exc:
                if attempt == 2 or exc.reason != Refusal.BUSY or await self._still_in_call(exc.in_call):
                    raise
                await self.limits.forget_in_call(callee, exc.in_call)
        raise AssertionError("the second attempt returns or raises")

    async def _still_in_call(self, call_ids: list[str]) -> bool:
        calls = [await self.calls.get(call_id) for call_id in call_ids]
        return any(call is not None and call.state is CallState.ANSWERED for call in calls)

    async def _turned_away(
        self,
        caller: Caller,
        callee: str,
        call_id: str,
        refusal: Refusal,
        name: str,
        created_at: int,
        ring_deadline: int,
        on_started: Callable[[CallRecord], Awaitable[None]] | None,
    ) -> CallRecord:
        """The callee's availability turned the call away: nothing rings and no push
        leaves. The call is made and missed at once, so both parties' histories hold it
        (with `reason` "dnd" or "busy"), and only the caller is told: `call.declined`."""
        await self._create_unrung(call_id, caller, callee, created_at, ring_deadline, name, refused=refusal.value)
        metrics.calls_counter(CallState.RINGING.value, "").inc()
        # Webhooks: call.missed with reason "dnd" or "busy", not "unanswered".
        transition = await self.calls.transition(
            call_id,
            Action.TIMEOUT,
            node=self.node,
            note={"why": refusal.value},
            webhook_reason=refusal.value,
            now=self.clock.now_ms(),
        )
        call = transition.call
        metrics.calls_counter(call.state.value, FINAL_REASON[call.state].value).inc()
        metrics.CALLS_TURNED_AWAY.labels(refusal.value).inc()
        log.info("call.turned_away", call_id=call_id, caller=caller.user_id, callee=callee, reason=refusal.value)
        if on_started is not None:
            await on_started(call)
        frame = {
            "type": FrameType.CALL_DECLINED,
            "call_id": call_id,
            "state": call.state.value,
            "reason": refusal.value,
            "ended_at": call.ended_at,
        }
        await self._tell([(caller.user_id, frame, [caller.device_id], ())])
        return call

    async def _create_unrung(
        self,
        call_id: str,
        caller: Caller,
        callee: str,
        created_at: int,
        ring_deadline: int,
        name: str,
        refused: str = "",
    ) -> None:
        """A call that is recorded but rings no device (turned away, or refused by the hook)."""
        created = await self.calls.create(
            call_id,
            caller_user=caller.user_id,
            caller_device=caller.device_id,
            callee_user=callee,
            ring_deadline=ring_deadline,
            node=self.node,
            targets=[],
            created_at=created_at,
            caller_name=name,
            refused=refused,
        )
        if not created:
            raise CallError("call_exists")

    async def _record_rejected(
        self,
        caller: Caller,
        callee: str,
        call_id: str,
        created_at: int,
        ring_deadline: int,
        caller_name: str | None,
        decision: Decision,
    ) -> None:
        """A call the hook refused is kept like any other (the status endpoint, operators,
        webhooks: call.created then call.failed, reason call_rejected), having rung nothing."""
        name = display_name(caller_name, caller.user_id)
        await self._create_unrung(call_id, caller, callee, created_at, ring_deadline, name)
        note: dict[str, Any] = {"why": REJECTED, "hook_answered": decision.answered}
        if decision.reason:
            note["reason"] = decision.reason
        await self.calls.transition(
            call_id, Action.FAIL, node=self.node, note=note, webhook_reason=REJECTED, now=self.clock.now_ms()
        )
        metrics.calls_counter(CallState.FAILED.value, REJECTED).inc()
        log.info("call.rejected", call_id=call_id, caller=caller.user_id, callee=callee, by_hook=decision.answered)

    async def ringing(self, user_id: str, device_id: str, call_id: str) -> CallRecord:
        call, first = await self.calls.record_event(
            call_id,
            user=user_id,
            device=device_id,
            entry={"event": "ringing", "device": device_id, "node": self.node},
            require_state=CallState.RINGING,
            require_callee=True,
            once_field="first_ringing_at",
            webhook=EventType.CALL_RINGING.value,
            now=self.clock.now_ms(),
        )
        if first:  # the caller hears ringback once, however many devices ring
            await self.bus.publish(
                call.caller_user,
                {"type": FrameType.CALL_RINGING, "call_id": call_id, "device_id": device_id},
                only=[call.caller_device],
            )
        return call

    async def act(
        self,
        action: Action,
        user_id: str,
        device_id: str,
        call_id: str,
        *,
        sdp: str | None = None,
        busy: bool = False,
    ) -> Transition:
        transition = await self.calls.transition(
            call_id,
            action,
            user=user_id,
            device=device_id,
            node=self.node,
            note={"busy": True} if busy else None,
            now=self.clock.now_ms(),
        )
        log.info(
            "call.transition",
            call_id=call_id,
            state=transition.call.state.value,
            previous=transition.previous.value,
            device=device_id,
        )
        await self.announce(transition, actor=Caller(user_id, device_id), sdp=sdp, busy=busy)
        return transition

    async def act_as_system(self, action: Action, call_id: str, *, note: dict[str, Any] | None = None) -> Transition:
        """An action that no device took (a ring timeout, a SIP leg that failed or never
        heard its ACK), under the same rules, events, pushes and metrics as a device's.
        `note` goes on the timeline entry. Raises CallError when the call refuses it."""
        transition = await self.calls.transition(call_id, action, node=self.node, note=note, now=self.clock.now_ms())
        log.info(
            "call.transition",
            call_id=call_id,
            state=transition.call.state.value,
            previous=transition.previous.value,
            party="system",
        )
        await self.announce(transition)
        return transition

    async def signal(self, user_id: str, device_id: str, call_id: str, payload: Any) -> None:
        call, _ = await self.calls.record_event(call_id, user=user_id, device=device_id, now=self.clock.now_ms())
        frame = {"type": FrameType.CALL_SIGNAL, "call_id": call_id, "from_device": device_id, "payload": payload}
        if user_id == call.caller_user:
            # Before an answer the caller's candidates go to every ringing device.
            only = [call.answered_by_device] if call.answered_by_device else None
            await self.bus.publish(call.callee_user, frame, only=only)
        else:
            await self.bus.publish(call.caller_user, frame, only=[call.caller_device])

    async def fire_timeout(self, call_id: str) -> Transition | None:
        try:
            transition = await self.act_as_system(Action.TIMEOUT, call_id)
        except CallError:
            # Answered, cancelled or gone before its deadline: nothing to fire.
            await self.calls.forget_timeout(call_id)
            return None
        log.info("call.timeout", call_id=call_id)
        return transition

    async def announce(
        self,
        transition: Transition,
        *,
        actor: Caller | None = None,
        sdp: str | None = None,
        busy: bool = False,
    ) -> None:
        """Tell the devices of both parties what the transition means for each of them.
        The acting device is not told: it has its `ack`."""
        call = transition.call
        metrics.calls_counter(call.state.value, FINAL_REASON[call.state].value if call.state.is_final else "").inc()
        if transition.previous is CallState.RINGING:
            self._push_ending(call, actor, transition.pushed)
        if transition.previous is CallState.ANSWERED and call.state.is_final:
            self._push_hang_up(call, actor)
        to_caller, to_callee = NOTICES[call.state]
        base: dict[str, Any] = {"call_id": call.call_id, "state": call.state.value}
        if call.state.is_final:
            base["reason"] = FINAL_REASON[call.state].value
            base["ended_at"] = call.ended_at
        if busy:
            base["busy"] = True
        if call.state is CallState.ANSWERED:
            answered = {**base, "type": FrameType.CALL_ANSWERED, "device_id": call.answered_by_device}
            if sdp is not None:
                answered["sdp"] = sdp
            await self._tell(
                [
                    (call.caller_user, answered, [call.caller_device], ()),
                    (call.callee_user, answered, [call.answered_by_device or ""], ()),
                    (
                        call.callee_user,
                        {**base, "type": to_callee, "device_id": call.answered_by_device},
                        None,
                        [call.answered_by_device or ""],
                    ),
                ]
            )
            return
        frames: list[Addressed] = []
        if actor is None or actor.user_id != call.caller_user:
            to_caller_frame = {**base, "type": to_caller, "reason": CALLER_REASON[call.state].value}
            frames.append((call.caller_user, to_caller_frame, [call.caller_device], ()))
        # After an answer only the device in the call is told; the others heard
        # "answered elsewhere" already.
        callee_only = [call.answered_by_device or ""] if transition.previous is CallState.ANSWERED else None
        exclude = [actor.device_id] if actor is not None and actor.user_id == call.callee_user else []
        frames.append((call.callee_user, {**base, "type": to_callee}, callee_only, exclude))
        await self._tell(frames)

    async def _tell(self, frames: list[Addressed]) -> None:
        """Publish what a transition means for each party, in one round trip. The
        transition has happened: a publish that fails (Redis failing over) is retried for
        a while, then logged, and never turns the actor's reply into an error that it
        would retry. A retry may tell a device twice; a device takes a frame twice as once."""
        call_id = frames[0][1]["call_id"]
        try:
            await retry_bounded(
                lambda: self.bus.publish_many(frames),
                what="call.announce",
                retry_on=TRANSIENT_REDIS_ERRORS,
                within=ANNOUNCE_RETRY_SECONDS,
                call_id=call_id,
                users=sorted({user_id for user_id, *_ in frames}),
            )
        except TRANSIENT_REDIS_ERRORS:
            for user_id, frame, *_ in frames:
                log.error("call.announce_failed", call_id=call_id, user=user_id, type=frame["type"])

    async def retell_endings(self, users: list[str], since_ms: int) -> None:
        """After a bus gap (a Redis failover): tell this node's devices how the calls to
        their users ended, or that one was answered elsewhere, if that happened in the
        gap. The server counted these devices as connected, so no push told them either.
        A device may hear an ending twice; ending a call twice does nothing."""
        for user in users:
            for call_id in await self.limits.recent_calls_to(user):
                call = await self.calls.get(call_id)
                if call is None or call.callee_user != user or call.state is CallState.RINGING:
                    continue
                if (call.ended_at or call.ring_deadline) < since_ms - 1000 and call.state is not CallState.ANSWERED:
                    continue
                frame: dict[str, Any] = {"call_id": call_id, "state": call.state.value, "type": NOTICES[call.state][1]}
                if call.state.is_final:
                    frame["reason"] = FINAL_REASON[call.state].value
                    frame["ended_at"] = call.ended_at
                exclude = [call.answered_by_device or ""] if call.state is CallState.ANSWERED else []
                await self.bus.deliver_local(user, frame, exclude=exclude)

    def _push_ending(self, call: CallRecord, actor: Caller | None, pushed: frozenset[str] | None) -> None:
        # The device that acted knows already; the pushes find who else does.
        acted = actor.device_id if actor is not None and actor.user_id == call.callee_user else None
        self.pushes.end(call, acted, pushed)

    def _push_hang_up(self, call: CallRecord, actor: Caller | None) -> None:
        # The devices in the call, less the one that ended it: a device whose socket is
        # gone would otherwise never hear the hang-up (the pushes check presence).
        parties = [
            (call.caller_user, call.caller_device, CALLER_REASON[call.state].value),
            (call.callee_user, call.answered_by_device or "", FINAL_REASON[call.state].value),
        ]
        self.pushes.hung_up(
            call,
            [
                (user, device, reason)
                for user, device, reason in parties
                if device and (actor is None or (actor.user_id, actor.device_id) != (user, device))
            ],
        )


class RingTimeouts:
    """Fires due ring timeouts, on every node, from the deadline set in Redis. A node that
    dies takes no timeouts with it: its leases run out and another node fires them. A
    node that stops (a drain) hands its leases back, so no timeout waits for them."""

    def __init__(
        self, controller: CallController, *, clock: Clock, interval: float = 0.2, lease_ms: int = 5000
    ) -> None:
        self._controller = controller
        self._clock = clock
        self._interval = interval
        self._lease_ms = lease_ms
        self._task: asyncio.Task[None] | None = None
        self._held: list[str] = []  # leased, not fired yet
        self._poll_failed = RepeatedLog(log, "timeouts.poll_failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ring-timeouts")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        held, self._held = self._held, []
        if held:
            try:
                await self._controller.calls.release_timeouts(held, self._clock.now_ms())
                log.info("timeouts.released", count=len(held))
            except Exception:  # their leases run out instead, lease_ms late
                log.warning("timeouts.release_failed", count=len(held), exc_info=True)

    async def _run(self) -> None:
        calls, clock = self._controller.calls, self._clock
        while True:
            failed = False
            try:
                claimed = await calls.claim_due_timeouts(
                    clock.now_ms(),
                    self._lease_ms,
                    node=self._controller.node,
                    bucket_lease_ms=int(self._interval * 1000),
                )
                self._held += [call_id for call_id in claimed if call_id not in self._held]
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away for a moment: the deadlines wait in Redis
                failed = True
            # A timeout that could not fire (its shard failing over) stays held and goes
            # again next tick: dropped, it would wait out its own lease, and the callee's
            # sleeping phone its cancellation, lease_ms after Redis is back.
            for call_id in list(self._held):
                try:
                    await self._controller.fire_timeout(call_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failed = True
                else:
                    self._held.remove(call_id)
            if failed:
                self._poll_failed.failed()
            else:
                self._poll_failed.ok()
            await clock.sleep(self._interval)
