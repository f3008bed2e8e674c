"""The pushes a call sends, and what their answers mean for devices.

- An invite (PushKit VoIP push) to every device of the callee with a VoIP token, the
  moment the call is created, bounded by the ring deadline.
- A cancellation to every device that was sent an invite and may not know the call is
  over: APNs keeps one push per device and app, so for a phone that is offline the
  cancellation displaces the invite and the phone never rings for a dead call.
- A hang-up (`call.ended`) when an answered call ends, to each device in the call that
  did not end it and whose WebSocket is gone: a user whose phone lost its socket mid-call
  still hears the other side hang up.
- A missed-call alert to devices that registered an ordinary APNs token.

Each push and its answer goes on the call's timeline. A token the platform calls no
good is dropped (a 410's only if it predates APNs's verdict: the notifier says which)
and the device is told to register again. What a push looks like on the wire, and
what a platform's answers mean, is the notifier's business (`voip/push/`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voip import metrics
from voip.auth import Authenticator
from voip.bus import Bus
from voip.calls import CallState, Party, verdict
from voip.clock import Clock
from voip.protocol import FrameType
from voip.push import Caller, Notifier, Outcome, Push, PushKind, PushResult, TokenDrop
from voip.stores import CallRecord, CallStore, DeviceStore, PushLog
from voip.tasks import BackgroundTasks, retry_bounded

log = structlog.get_logger(__name__)

# Redis errors that pass: a restart, a failover (a replica refusing writes), a timeout.
TRANSIENT_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
# Once APNs has answered, the answer is recorded however long Redis takes to come back,
# up to this many seconds: a push on the phone with no trace in Redis is never cancelled.
BOOKKEEPING_WINDOW = 30.0
# Seconds a cancellation is still retried after the ring deadline: unlike a late invite,
# a late cancellation only ever ends a ghost call.
CANCELLATION_GRACE = 30.0
# Seconds a hang-up push is retried and kept: a phone offline for longer has lost the
# call's audio anyway, and asks the status when it reconnects.
HANG_UP_LIFETIME = 30.0
# Answers that make a push.failed webhook event. Not EXPIRED: a push whose call's deadline
# passed before APNs took it has nothing left to do.
PUSH_FAILURES = frozenset({Outcome.REJECTED, Outcome.TOKEN_INVALID, Outcome.FAILED})
# Answers that say the platform holds nothing for the device: a cancellation after such an
# invite would be refused again, or sent to a token that no longer exists. Not FAILED: an
# invite written and never answered may have reached the phone.
REFUSED = frozenset({Outcome.REJECTED, Outcome.TOKEN_INVALID})
# Seconds a missed-call alert may spend on retries.
MISSED_ALERT_RETRY_WINDOW = 60.0


class CallPushes:
    def __init__(
        self,
        notifier: Notifier,
        calls: CallStore,
        devices: DeviceStore,
        push_log: PushLog,
        bus: Bus,
        auth: Authenticator,
        *,
        public_url: str,
        node: str,
        clock: Clock,
    ) -> None:
        self.notifier = notifier
        self.calls = calls
        self.devices = devices
        self.push_log = push_log
        self.bus = bus
        self.auth = auth
        self.public_url = public_url
        self.node = node
        self.clock = clock
        self._sending: dict[str, set[asyncio.Task[Any]]] = {}
        self.tasks = BackgroundTasks("push")

    def status_url(self, call: CallRecord, device_id: str) -> str:
        # The capability outlives the ring: a push delivered hours late must still get
        # its verdict, for as long as the call is kept.
        expires = call.ring_deadline // 1000 + (call.retention or self.calls.retention)
        capability = self.auth.capability(call.call_id, device_id, expires)
        return f"{self.public_url}/v1/calls/{call.call_id}/status?device_id={device_id}&cap={capability}"

    def addresses(self, devices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Where each device's invite goes, by device id, for the devices that can get
        one: stored with the call, so its cancellations go where its invites went."""
        addresses = {device_id: self.notifier.address(record, PushKind.INVITE) for device_id, record in devices.items()}
        return {device_id: address for device_id, address in addresses.items() if address is not None}

    def invite(
        self,
        call: CallRecord,
        addresses: dict[str, dict[str, Any]],
        caller_name: str,
        custom: dict[str, Any] | None = None,
    ) -> None:
        """Send the invites now, in the background: nothing waits for the platform.
        `custom`: the app's own data for the call, into each invite's payload."""
        caller = Caller(id=call.caller_user, display_name=caller_name)
        for device_id, address in addresses.items():
            push = Push(
                PushKind.INVITE,
                call.call_id,
                address,
                deadline=call.ring_deadline / 1000,
                caller=caller,
                status_url=self.status_url(call, device_id),
                custom=custom,
            )
            self._spawn(call.call_id, f"invite:{call.call_id}:{device_id}", self._invite(call, device_id, push))

    async def _invite(self, call: CallRecord, device_id: str, push: Push) -> None:
        result, current, cancelled_at = await self._send(call, device_id, push)
        if result.outcome is not Outcome.ACCEPTED:
            return
        accepted_at = self.clock.now_ms()
        # The call may have ended, on any node, while APNs was being retried. If a
        # cancellation reached APNs before this invite did, the invite displaced it in
        # APNs's store: cancel again, or an offline phone wakes to a ghost call.
        if current is None or cancelled_at is None or cancelled_at > accepted_at:
            return
        reason = _reason_for(current, device_id, self.clock.now_ms())
        if reason is not None:
            await self._send(current, device_id, self._cancellation(current, push.address, reason))

    def end(self, call: CallRecord, acted: str | None, pushed: frozenset[str] | None = None) -> None:
        """The call left ringing: stop its invites on this node and, in the background,
        cancel every device that was pushed and does not know yet (`acted`: the callee's
        device that ended it, which does); a missed call also alerts the callee.
        `pushed`: the devices the invites went to, when known (the transition read them):
        if that is only `acted`, there is no one to cancel and nothing to read."""
        for task in self._sending.pop(call.call_id, set()):
            task.cancel()
        if call.state is not CallState.MISSED and pushed is not None and pushed <= {acted}:
            return
        self._spawn(call.call_id, f"end:{call.call_id}", self._end(call, acted))

    async def _end(self, call: CallRecord, acted: str | None) -> None:
        # Retried like the bookkeeping: the call has already changed in Redis, and no one
        # else will ever send these (a timeout fired again finds the call ended).
        addresses, online, devices = await self._bookkeep(
            lambda: self.calls.ending_context(call), call.call_id, "", "cancel"
        )
        # Connected devices hear the outcome over their WebSocket.
        knowing = online | ({acted} if acted else set())
        reasons = {
            device_id: reason
            for device_id in addresses
            if device_id not in knowing and (reason := _reason_for(call, device_id, self.clock.now_ms())) is not None
        }
        claimed = await self._bookkeep(
            lambda: self.calls.claim_cancellations(call.call_id, sorted(reasons), self.node), call.call_id, "", "cancel"
        )
        for device_id in claimed:
            push = self._cancellation(call, addresses[device_id], reasons[device_id])
            self._spawn(call.call_id, f"cancel:{call.call_id}:{device_id}", self._send(call, device_id, push))
        if call.state is CallState.MISSED:
            self.missed(call, devices, call.caller_name)

    def unheard(self, call_id: str, device_id: str) -> None:
        """`device_id`'s socket closed as its frame ending `call_id` went out (voip/ws.py):
        it may never have read it, and the ending skipped it as connected. If an invite
        woke it and no cancellation went to it, one goes now: a wasted push at worst,
        never a phone ringing on for a call that is over."""
        self._spawn(call_id, f"unheard:{call_id}:{device_id}", self._unheard(call_id, device_id))

    async def _unheard(self, call_id: str, device_id: str) -> None:
        call, addresses, cancelled = await self._bookkeep(
            lambda: self.calls.cancellation_context(call_id), call_id, device_id, "cancel"
        )
        address = addresses.get(device_id)
        if call is None or address is None or device_id in cancelled:
            return
        reason = _reason_for(call, device_id, self.clock.now_ms())
        if reason is None:
            return
        claimed = await self._bookkeep(
            lambda: self.calls.claim_cancellations(call_id, [device_id], self.node), call_id, device_id, "cancel"
        )
        if claimed:
            await self._send(call, device_id, self._cancellation(call, address, reason))

    def hung_up(self, call: CallRecord, parties: list[tuple[str, str, str]]) -> None:
        """An answered call ended: send `call.ended` to each (user, device, reason) in the
        call that has a VoIP token and no socket on any node, in the background."""
        for user_id, device_id, reason in parties:
            if self.bus.attached(user_id, device_id):
                continue  # connected to this node: it hears the hang-up on its socket
            self._spawn(
                call.call_id, f"ended:{call.call_id}:{device_id}", self._hang_up(call, user_id, device_id, reason)
            )

    async def _hang_up(self, call: CallRecord, user_id: str, device_id: str, reason: str) -> None:
        devices, online = await self._bookkeep(
            lambda: self.devices.reachable(user_id), call.call_id, device_id, "ended"
        )
        record = devices.get(device_id)
        address = None if device_id in online or record is None else self.notifier.address(record, PushKind.ENDED)
        if address is None:
            return
        push = Push(
            PushKind.ENDED, call.call_id, address, deadline=self.clock.now_ms() / 1000 + HANG_UP_LIFETIME, reason=reason
        )
        await self._send(call, device_id, push, user_id=user_id)

    def missed(self, call: CallRecord, devices: dict[str, dict[str, Any]], caller_name: str) -> None:
        caller = Caller(id=call.caller_user, display_name=caller_name)
        for device_id, record in devices.items():
            address = self.notifier.address(record, PushKind.MISSED_ALERT)
            if address is None:
                continue
            push = Push(
                PushKind.MISSED_ALERT,
                call.call_id,
                address,
                deadline=self.clock.now_ms() / 1000 + MISSED_ALERT_RETRY_WINDOW,
                caller=caller,
            )
            self._spawn(call.call_id, f"missed_alert:{call.call_id}:{device_id}", self._send(call, device_id, push))

    def _cancellation(self, call: CallRecord, address: dict[str, Any], reason: str) -> Push:
        deadline = max(call.ring_deadline / 1000, self.clock.now_ms() / 1000 + CANCELLATION_GRACE)
        return Push(PushKind.CANCEL, call.call_id, address, deadline=deadline, reason=reason)

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    async def wait(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the pushes in flight, their bookkeeping
        included; cancel what is left and return how many that was."""
        left = await self.tasks.wait(timeout)
        if left:
            log.error("push.abandoned", count=left, note="still in flight at shutdown")
            await self.tasks.cancel()
        return left

    def _spawn(self, call_id: str, name: str, work: Any) -> None:
        task = self.tasks.spawn(work, name)
        tasks = self._sending.setdefault(call_id, set())
        tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            tasks.discard(finished)
            if not tasks and self._sending.get(call_id) is tasks:
                del self._sending[call_id]

        task.add_done_callback(done)

    async def _send(
        self, call: CallRecord, device_id: str, push: Push, *, user_id: str | None = None
    ) -> tuple[PushResult, CallRecord | None, int | None]:
        """Send, put the answer on the timeline; for an invite, read back in the same
        round trip what `_invite` needs to know. `user_id`: the device's owner, the
        callee unless said."""
        user_id = user_id or call.callee_user
        kind = push.kind.value
        result = await self.notifier.notify(push)
        metrics.PUSHES.labels(result.platform, result.app, kind, result.outcome.value, result.reason or "").inc()
        metrics.PUSH_LATENCY.labels(result.platform, result.app, kind).observe(result.latency_ms / 1000)
        entry: dict[str, Any] = {
            "at": self.clock.now_ms(),
            "event": "push",
            "kind": kind,
            "device": device_id,
            "node": self.node,
        }
        if result.platform == "ios":
            entry["apns_id"] = result.apns_id
            entry["environment"] = result.environment.value
            entry["push_type"] = result.push_type.value
        else:
            # FCM: which service answered, and the name FCM gave the message.
            entry["platform"] = result.platform
            entry["message_id"] = result.message_id
        entry |= {
            "outcome": result.outcome.value,
            "status": result.status,
            "reason": result.reason,
            "latency_ms": round(result.latency_ms, 2),
            "attempts": result.attempts,
        }
        if result.likely_cause:
            entry["likely_cause"] = result.likely_cause
        if result.timestamp is not None:
            entry["apns_timestamp"] = result.timestamp
        # Its own task: a call that ends meanwhile cancels this push's retries towards
        # APNs, never the record of an answer APNs already gave.
        record = self.tasks.spawn(
            self._record(call, user_id, device_id, kind, result, entry), f"record:{kind}:{call.call_id}:{device_id}"
        )
        current, cancelled_at = await asyncio.shield(record)
        log.info(
            "push.sent",
            call_id=call.call_id,
            device=device_id,
            kind=kind,
            outcome=result.outcome.value,
            status=result.status,
            reason=result.reason,
        )
        if result.outcome in PUSH_FAILURES and self.calls.webhooks_ttl:
            self.tasks.spawn(
                self._push_failed(call, device_id, kind, result), f"push-failed:{call.call_id}:{device_id}"
            )
        # Devices keep one token that can be dropped: the one VoIP pushes go to.
        if push.kind is not PushKind.MISSED_ALERT and (drop := result.drop_token) is not None:
            await self._drop_token(call, user_id, device_id, result, drop)
        return result, current, cancelled_at

    async def _push_failed(self, call: CallRecord, device_id: str, kind: str, result: PushResult) -> None:
        """The webhook event push.failed, into the call's outbox (retried while Redis is away)."""
        extra = {"push": {"device": device_id, "kind": kind, "outcome": result.outcome.value, "reason": result.reason}}
        at = self.clock.now_ms()
        await retry_bounded(
            lambda: self.calls.webhook_event(call.call_id, "push.failed", extra, at),
            what="push.failed_event",
            retry_on=TRANSIENT_REDIS_ERRORS,
            within=BOOKKEEPING_WINDOW,
            call_id=call.call_id,
        )

    async def _record(
        self, call: CallRecord, user_id: str, device_id: str, kind: str, result: PushResult, entry: dict[str, Any]
    ) -> tuple[CallRecord | None, int | None]:
        """Put APNs's answer on the timeline, as the device's last push and, for a
        delivered cancellation, in the call's cancellations: retried while Redis is away."""

        async def append() -> tuple[CallRecord | None, int | None]:
            return await self.push_log.record_answer(
                call.call_id,
                entry,
                read_back_for=device_id if kind == "invite" else None,
                last_push=(user_id, device_id, {**entry, "call_id": call.call_id}) if kind != "missed_alert" else None,
                cancelled=(device_id, entry["at"]) if kind == "cancel" and result.outcome is Outcome.ACCEPTED else None,
                refused=device_id if kind == "invite" and result.outcome in REFUSED else None,
            )

        current, cancelled_at = await self._bookkeep(append, call.call_id, device_id, kind)
        return current, cancelled_at

    async def _bookkeep(self, step: Any, call_id: str, device_id: str, kind: str) -> Any:
        return await retry_bounded(
            step,
            what="push.bookkeeping",
            retry_on=TRANSIENT_REDIS_ERRORS,
            within=BOOKKEEPING_WINDOW,
            call_id=call_id,
            device=device_id,
            kind=kind,
        )

    async def _drop_token(
        self, call: CallRecord, user_id: str, device_id: str, result: PushResult, drop: TokenDrop
    ) -> None:
        dropped = await self._bookkeep(
            lambda: self.devices.drop_voip_token(
                user_id, device_id, result.device_token, drop.registered_before, field=result.token_field
            ),
            call.call_id,
            device_id,
            "token",
        )
        await self._bookkeep(
            lambda: self.calls.append_timeline(
                call.call_id,
                [
                    {
                        "at": self.clock.now_ms(),
                        "event": "token",
                        "device": device_id,
                        "node": self.node,
                        "dropped": dropped,
                        "reason": result.reason,
                        **({"platform": result.platform} if result.platform != "ios" else {}),
                    }
                ],
            ),
            call.call_id,
            device_id,
            "token",
        )
        if dropped:
            await self.bus.publish(
                user_id,
                {"type": FrameType.DEVICE_REREGISTER, "device_id": device_id, "reason": result.reason},
                only=[device_id],
            )


def _reason_for(call: CallRecord, device_id: str, now_ms: int) -> str | None:
    """The status endpoint's reason for this callee device, or None if it should keep the call."""
    told = verdict(
        call.state,
        party=Party.CALLEE,
        device_id=device_id,
        answered_by_device=call.answered_by_device,
        ring_deadline_ms=call.ring_deadline,
        now_ms=now_ms,
    )
    return told.reason.value if told.end_call and told.reason is not None else None
