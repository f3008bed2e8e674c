"""The pushes a call sends, and what their answers mean for devices.

- An invite (PushKit VoIP push) to every device of the callee with a VoIP token, the
  moment the call is created, bounded by the ring deadline.
- A cancellation to every device that was sent an invite and may not know the call is
  over: APNs keeps one push per device and app, so for a phone that is offline the
  cancellation displaces the invite and the phone never rings for a dead call.
- A missed-call alert to devices that registered an ordinary APNs token.

Each push and its APNs answer goes on the call's timeline. A token APNs calls invalid is
dropped (only if it predates APNs's verdict) and the device is told to register again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import structlog

from voip import metrics
from voip.auth import Authenticator
from voip.bus import Bus
from voip.calls import FINAL_REASON, CallState, EndReason
from voip.push import Caller, Notifier, Outcome, PushRequest, PushResult
from voip.push import call_cancellation, missed_call_alert, voip_invite
from voip.store import CallRecord, Store

log = structlog.get_logger(__name__)

# APNs reasons that say the token itself is bad, whatever the moment.
BAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})


class CallPushes:
    def __init__(
        self,
        notifier: Notifier,
        store: Store,
        bus: Bus,
        auth: Authenticator,
        *,
        bundle_id: str,
        public_url: str,
        node: str,
    ) -> None:
        self.notifier = notifier
        self.store = store
        self.bus = bus
        self.auth = auth
        self.bundle_id = bundle_id
        self.public_url = public_url
        self.node = node
        self._sending: dict[str, set[asyncio.Task[Any]]] = {}

    def status_url(self, call: CallRecord, device_id: str) -> str:
        # The capability outlives the ring: a push delivered hours late must still get
        # its verdict, for as long as the call is kept.
        expires = call.ring_deadline // 1000 + (call.retention or self.store.retention)
        capability = self.auth.capability(call.call_id, device_id, expires)
        return f"{self.public_url}/v1/calls/{call.call_id}/status?device_id={device_id}&cap={capability}"

    def invite(self, call: CallRecord, pushes: dict[str, dict[str, Any]], caller_name: str) -> None:
        """Send the invites now, in the background: nothing waits for APNs."""
        caller = Caller(id=call.caller_user, display_name=caller_name)
        for device_id, target in pushes.items():
            request = voip_invite(
                bundle_id=self.bundle_id,
                device_token=target["token"],
                environment=target["environment"],
                call_id=call.call_id,
                caller=caller,
                ring_deadline=call.ring_deadline / 1000,
                status_url=self.status_url(call, device_id),
                apns_id=target["apns_id"],
            )
            self._spawn(call.call_id, self._invite(call, device_id, request))

    async def _invite(self, call: CallRecord, device_id: str, request: PushRequest) -> None:
        result, current, cancelled_at = await self._send(call, device_id, "invite", request)
        if result.outcome is not Outcome.DELIVERED:
            return
        accepted_at = int(time.time() * 1000)
        # The call may have ended, on any node, while APNs was being retried. If a
        # cancellation reached APNs before this invite did, the invite displaced it in
        # APNs's store: cancel again, or an offline phone wakes to a ghost call.
        if current is None or cancelled_at is None or cancelled_at > accepted_at:
            return
        reason = _reason_for(current, device_id)
        if reason is not None:
            cancellation = self._cancellation(current, request.device_token, request.environment, reason)
            await self._send(current, device_id, "cancel", cancellation)

    def end(self, call: CallRecord, pushes: dict[str, dict[str, Any]], knowing: Iterable[str]) -> None:
        """The call left ringing: stop its invites on this node and cancel every device
        that was pushed and does not know yet."""
        for task in self._sending.pop(call.call_id, set()):
            task.cancel()
        knowing = set(knowing)
        for device_id, target in pushes.items():
            reason = _reason_for(call, device_id)
            if device_id in knowing or reason is None:
                continue
            request = self._cancellation(call, target["token"], target["environment"], reason)
            self._spawn(call.call_id, self._send(call, device_id, "cancel", request))

    def missed(self, call: CallRecord, devices: dict[str, dict[str, Any]], caller_name: str) -> None:
        caller = Caller(id=call.caller_user, display_name=caller_name)
        for device_id, record in devices.items():
            if not record.get("alert_token"):
                continue
            request = missed_call_alert(
                bundle_id=record.get("bundle_id") or self.bundle_id,
                device_token=record["alert_token"],
                environment=record.get("apns_environment", "production"),
                call_id=call.call_id,
                caller=caller,
            )
            self._spawn(call.call_id, self._send(call, device_id, "missed_alert", request))

    def _cancellation(self, call: CallRecord, token: str, environment: str, reason: str) -> PushRequest:
        # Retried for a little while even after the ring deadline: unlike a late invite,
        # a late cancellation only ever ends a ghost call.
        return call_cancellation(
            bundle_id=self.bundle_id,
            device_token=token,
            environment=environment,
            call_id=call.call_id,
            reason=reason,
            ring_deadline=max(call.ring_deadline / 1000, time.time() + 30),
        )

    def _spawn(self, call_id: str, work: Any) -> None:
        task = asyncio.create_task(work)
        tasks = self._sending.setdefault(call_id, set())
        tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            tasks.discard(finished)
            if not tasks and self._sending.get(call_id) is tasks:
                del self._sending[call_id]

        task.add_done_callback(done)

    async def _send(
        self, call: CallRecord, device_id: str, kind: str, request: PushRequest
    ) -> tuple[PushResult, CallRecord | None, int | None]:
        """Send, put the answer on the timeline; for an invite, read back in the same
        round trip what `_invite` needs to know."""
        result = await self.notifier.send(request)
        metrics.PUSHES.labels(kind, result.outcome.value, result.reason or "").inc()
        metrics.PUSH_LATENCY.labels(kind).observe(result.latency_ms / 1000)
        entry: dict[str, Any] = {
            "at": int(time.time() * 1000),
            "event": "push",
            "kind": kind,
            "device": device_id,
            "node": self.node,
            "apns_id": result.apns_id,
            "environment": result.environment.value,
            "push_type": result.push_type.value,
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
        current, cancelled_at = await self.store.append_and_read(
            call.call_id,
            [entry],
            cancellation_of=device_id if kind == "invite" else None,
            last_push=(call.callee_user, device_id, {**entry, "call_id": call.call_id})
            if kind != "missed_alert"
            else None,
        )
        if kind == "cancel" and result.outcome is Outcome.DELIVERED:
            await self.store.record_cancellation(call.call_id, device_id, entry["at"])
        log.info("push.sent", call_id=call.call_id, device=device_id, kind=kind,
                 outcome=result.outcome.value, status=result.status, reason=result.reason)
        if kind != "missed_alert" and (
            result.outcome is Outcome.TOKEN_INVALID or result.reason in BAD_TOKEN_REASONS
        ):
            await self._drop_token(call, device_id, request.device_token, result)
        return result, current, cancelled_at

    async def _drop_token(self, call: CallRecord, device_id: str, token: str, result: PushResult) -> None:
        # A 410 only condemns a token registered before APNs's timestamp: a phone that
        # registered the same token again afterwards keeps it.
        before = result.timestamp if result.outcome is Outcome.TOKEN_INVALID else None
        dropped = await self.store.drop_voip_token(call.callee_user, device_id, token, before)
        await self.store.append_timeline(
            call.call_id,
            [{"at": int(time.time() * 1000), "event": "token", "device": device_id, "node": self.node,
              "dropped": dropped, "reason": result.reason}],
        )
        if dropped:
            await self.bus.publish(
                call.callee_user,
                {"type": "device.reregister", "device_id": device_id, "reason": result.reason},
                only=[device_id],
            )


def _reason_for(call: CallRecord, device_id: str) -> str | None:
    """The status endpoint's reason for this device, or None if it should keep the call."""
    if call.state is CallState.ANSWERED:
        return None if device_id == call.answered_by_device else EndReason.ANSWERED_ELSEWHERE.value
    if call.state is CallState.RINGING:
        return None
    return FINAL_REASON[call.state].value
