"""Calls in Redis: created, moved and read atomically, shared by every node.

A call hash carries its own `ring_deadline` (ms) and `retention` (s), set by the node
that created it: every node applies those, never its own settings. Keys: layout.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from voip.calls import Action, CallState, Party, transitions_for
from voip.clock import now_ms
from voip.redis_pipe import RedisPipe, StatusPipe
from voip.redis_pool import UNAVAILABLE
from voip.stores.layout import BUCKETS, KeyLayout, Scripted, batch, clustered, load_script, on_pipe
from voip.stores.presence import online_devices

log = structlog.get_logger(__name__)

# Ring-deadline buckets a node works each tick: a whole round takes BUCKETS / this ticks
# (0.8 s at RingTimeouts' 0.2 s), fewer with more nodes sharing the round.
BUCKETS_PER_TICK = 4


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    state: CallState
    caller_user: str
    caller_device: str
    callee_user: str
    created_at: int
    ring_deadline: int
    answered_by_device: str | None = None
    ended_at: int | None = None
    ended_by: str | None = None
    origin_node: str = ""
    caller_name: str = ""
    # Seconds the call stays queryable once final: the creating node's setting, kept with
    # the call so that every node applies the same (0: a call from before it was stored).
    retention: int = 0

    @classmethod
    def from_hash(cls, call_id: str, fields: dict[str, Any]) -> CallRecord:
        def optional_int(name: str) -> int | None:
            value = fields.get(name)
            return int(value) if value not in (None, "") else None

        return cls(
            call_id=call_id,
            state=CallState(fields["state"]),
            caller_user=fields["caller_user"],
            caller_device=fields["caller_device"],
            callee_user=fields["callee_user"],
            created_at=int(fields["created_at"]),
            ring_deadline=int(fields["ring_deadline"]),
            answered_by_device=fields.get("answered_by_device") or None,
            ended_at=optional_int("ended_at"),
            ended_by=fields.get("ended_by") or None,
            origin_node=fields.get("origin_node", ""),
            caller_name=fields.get("caller_name") or fields["caller_user"],
            retention=int(fields.get("retention") or 0),
        )


class CallError(Exception):
    """A request about a call that the call's state or its parties refuse."""

    def __init__(self, code: str, call: CallRecord | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.call = call


class CallRefused(CallError):
    """A new call that the callee's limits refuse: `reason` is "callee_busy" (too many
    calls ringing it now) or "rate_limited" (too many new calls to it this minute; try
    again in `retry_after` seconds)."""

    def __init__(self, reason: str, retry_after: int = 0) -> None:
        super().__init__("call_refused")
        self.reason = reason
        self.retry_after = retry_after


class CalleeUnavailable(CallError):
    """A new call the callee's availability turns away before anything rings: `reason`
    "dnd" (do-not-disturb) or "busy" (when_busy "reject", in an answered call: `in_call`,
    their ids as the callee's index holds them). Not told to the caller as an error: the
    controller records the call as missed and tells the caller `call.declined`."""

    def __init__(self, reason: str, in_call: list[str] | None = None) -> None:
        super().__init__("callee_unavailable")
        self.reason = reason
        self.in_call = in_call or []


@dataclass(frozen=True, slots=True)
class Transition:
    previous: CallState
    call: CallRecord
    # A call that left ringing: the devices its invite pushes went to (None: not read).
    pushed: frozenset[str] | None = None


class CallStore:
    def __init__(
        self,
        redis: Redis,
        keys: KeyLayout,
        *,
        retention: int,
        ops_channel: str,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        status_pipe: StatusPipe | None = None,
        history_retention: int = 30 * 86400,
        webhooks_ttl: int = 0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.retention = retention
        # VOIP_HISTORY_RETENTION: kept with each call, like `retention`, so that every node
        # keeps its history record as long as the node that created it said.
        self.history_retention = history_retention
        # Every timeline entry is also published here, from inside the same script, so
        # operators see each change live at no extra round trip ("": the feed is off).
        self._ops_channel = ops_channel
        # VOIP_REDIS_WAIT_REPLICAS: a new call is acknowledged by this many replicas
        # (WAIT, bounded) before the caller hears of it (docs/deploy.md#redis-sentinel).
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # The hottest command's own connection (redis_pipe.py); redis-py when None.
        self._status_pipe = status_pipe
        # The call path's scripts and pipelines go over it too on one Redis or Sentinel
        # (docs/benchmarks.md#issue-12-the-call-paths-redis-over-the-lean-pipe); on a
        # cluster its single scripts do, its pipelines go through redis-py (on_shards).
        self._pipe = status_pipe if isinstance(status_pipe, RedisPipe) else None
        self._create = load_script(redis, "create_call")
        self._transition = load_script(redis, "transition")
        self._call_event = load_script(redis, "call_event")
        self._status = load_script(redis, "status_check")
        self._claim = load_script(redis, "claim_timeouts")
        self._webhook_event = load_script(redis, "webhook_event")
        # VOIP_WEBHOOK_URLS set: seconds a call's webhook outbox is kept (0: no outbox).
        # Each script that changes a call appends its event in the same step.
        self.webhooks_ttl = webhooks_ttl
        # Told the call id of each event this node filed: its delivery starts at once.
        self.on_webhook: Callable[[str], None] | None = None
        # Where this node's round over the ring-deadline buckets goes on; nodes start apart.
        self._next_bucket = random.randrange(BUCKETS)
        # No call outlives this: unended, ring timeout (<= 600 s) + retention after its
        # creation; ended, retention after its end.
        self._calls_horizon_ms = (2 * retention + 600) * 1000

    async def _script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """One script, over the node's lean pipe where it has one."""
        if self._pipe is not None:
            (reply,) = await on_pipe(self._pipe, [(script, keys, args)])
            return reply
        if self._status_pipe is not None:  # a cluster's
            source = script.script
            assert isinstance(source, (bytes, str))
            return await self._status_pipe.evalsha(script.sha, source, keys, args)
        return await script(keys=keys, args=args)

    async def _batch(
        self, scripts: list[Scripted], queue: Callable[[Any], object] | None = None, *, lean: bool = True
    ) -> list[Any]:
        """batch(), over the node's lean pipe where it has one (`lean`: a batch that holds
        WAIT may not: it would hold up every other command on the pipe's one connection)."""
        return await batch(self._redis, scripts, queue, pipe=self._pipe if lean else None)

    def _call_keys(self, call_id: str) -> list[str]:
        return [self._keys.call(call_id), self._keys.timeline(call_id)]

    def _webhook_spec(self, **extra: Any) -> bytes | str:
        """The scripts' webhooks argument: "" when webhooks are off."""
        return orjson.dumps({"ttl": self.webhooks_ttl, **extra}) if self.webhooks_ttl else ""

    def _filed(self, call_id: str) -> None:
        if self.on_webhook is not None:
            self.on_webhook(call_id)

    def _due(self, pipe: Any, call_id: str, at: int) -> None:
        """Queue: the call is due for webhook delivery. Sent with the script that wrote the
        event (batch()), in the same round trip: on one Redis right after it, on a cluster
        at the same time on the index's shard (docs/webhooks.md#delivery)."""
        pipe.zadd(self._keys.webhooks_due(call_id), {call_id: at})

    async def webhook_event(self, call_id: str, kind: str, extra: dict[str, Any], at: int) -> bool:
        """An event that changes no state (push.failed) into the call's outbox; False for
        a call that is gone, or webhooks off."""
        if not self.webhooks_ttl:
            return False
        written, *_ = await self._batch(
            [
                (
                    self._webhook_event,
                    [self._keys.call(call_id), self._keys.webhooks(call_id)],
                    [kind, at, orjson.dumps(extra), self.webhooks_ttl],
                )
            ],
            lambda pipe: self._due(pipe, call_id, at),
        )
        if written:
            self._filed(call_id)
        return bool(written)

    async def create(
        self,
        call_id: str,
        *,
        caller_user: str,
        caller_device: str,
        callee_user: str,
        ring_deadline: int,
        node: str,
        targets: list[str],
        created_at: int,
        pushes: dict[str, dict[str, Any]] | None = None,
        caller_name: str = "",
        announce: tuple[str, bytes] | None = None,
        refused: str = "",
    ) -> bool:
        """Create the call if its id is free; `announce` is published (channel, message)
        by the same script once the call exists. `refused`: "dnd" or "busy", a call the
        callee's availability turned away (kept for its history's `reason`)."""
        attempt = random.getrandbits(64).to_bytes(8, "big").hex()
        fields = {
            "state": CallState.RINGING.value,
            "caller_user": caller_user,
            "caller_device": caller_device,
            "callee_user": callee_user,
            "created_at": created_at,
            "ring_deadline": ring_deadline,
            "origin_node": node,
            "caller_name": caller_name or caller_user,
            "retention": self.retention,
            # Tells a resent script (after a dropped connection) from a second call with this id.
            "attempt": attempt,
            "history_retention": self.history_retention,
        }
        if refused:
            fields["refused"] = refused
        entry = {
            "at": created_at,
            "event": "created",
            "node": node,
            "device": caller_device,
            "caller": caller_user,
            "callee": callee_user,
            "targets": targets,
        }
        # A ringing call lives until well past its deadline even if no timeout ever fires.
        ttl = int((ring_deadline - created_at) / 1000) + self.retention
        pushes_json = {device: orjson.dumps(target).decode() for device, target in (pushes or {}).items()}
        channel, message = announce or ("", b"")
        # A script on a cluster may publish only to its own slot's sharded channels: there
        # the callee's channel is told after the script, from the callee's shard.
        in_script = not clustered(self._redis)
        webhooks = self._webhook_spec()
        script: Scripted = (
            self._create,
            [
                *self._call_keys(call_id),
                self._keys.pushes(call_id),
                self._keys.history_record(call_id),
                *([self._keys.webhooks(call_id)] if webhooks else []),
            ],
            [
                orjson.dumps(fields),
                orjson.dumps(entry),
                ttl,
                self._ops_channel,
                call_id,
                orjson.dumps(pushes_json),
                *((channel, message) if in_script else ("", "")),
                attempt,
                webhooks,
            ],
        )

        def index(pipe: Any, due: bool = True) -> None:
            # NX: if the id is taken, the existing call's deadline must stay as it is.
            pipe.zadd(self._keys.ring_deadlines(call_id), {call_id: ring_deadline}, nx=True)
            # The index is in another slot than the call, so it cannot be in the script.
            index_key = self._keys.calls_index(call_id)
            pipe.zadd(index_key, {call_id: created_at}, nx=True)
            pipe.zremrangebyscore(index_key, "-inf", created_at - self._calls_horizon_ms)
            if webhooks and due:
                self._due(pipe, call_id, created_at)
            if self._wait_replicas:
                # Same connection as the writes above, so WAIT covers exactly them. Best
                # effort: past the timeout the call goes ahead, unreplicated.
                pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)

        if in_script:
            created, *_ = await self._batch([script], index, lean=not self._wait_replicas)
            if created and webhooks:
                self._filed(call_id)
            return bool(created)
        # On a cluster, two waits: the script, then at once the callee's call.incoming and
        # the indexes (a write per shard). Not the index before the call exists: an
        # operator's listing that met it then would drop it as the entry of a gone call
        # (voip/ops/index.py); not call.incoming before: the callee would answer no call.
        # The webhook due index goes with the script, at once on its own shard: an index
        # entry whose event is not written yet is harmless, an event without one is not.
        (created, *_) = await self._batch(
            [script], (lambda pipe: self._due(pipe, call_id, created_at)) if webhooks else None
        )
        if created:

            def announce_and_index(pipe: Any) -> None:
                if channel:
                    pipe.spublish(channel, message)
                index(pipe, due=False)

            await self._batch([], announce_and_index)
            if webhooks:
                self._filed(call_id)
        return bool(created)

    async def transition(
        self,
        call_id: str,
        action: Action,
        *,
        user: str = "",
        device: str = "",
        node: str,
        note: dict[str, Any] | None = None,
        webhook_reason: str | None = None,
        now: int | None = None,
    ) -> Transition:
        """Apply `action` atomically; raises CallError when the call or its state refuses.
        `webhook_reason`: the webhook event's reason, when not the state's own. `now`: the
        caller's clock (ms), the one the call's deadline was set by."""
        if user:
            moves = {
                party.value: {k.value: v.value for k, v in transitions_for(action, party).items()}
                for party in (Party.CALLER, Party.CALLEE)
            }
        else:
            moves = {Party.SYSTEM.value: {k.value: v.value for k, v in transitions_for(action, Party.SYSTEM).items()}}
        at = now_ms() if now is None else now
        webhooks = self._webhook_spec(**({"reason": webhook_reason} if webhook_reason else {}))
        keys = [*self._call_keys(call_id), self._keys.pushes(call_id), self._keys.history_record(call_id)]
        if webhooks:
            keys.append(self._keys.webhooks(call_id))
        args: list[Any] = [
            orjson.dumps(moves),
            user,
            device,
            at,
            node,
            action.value,
            self.retention,  # only for a call that does not carry its own
            orjson.dumps(note) if note else "",
            self._ops_channel,
            call_id,
            random.getrandbits(64).to_bytes(8, "big").hex(),
            webhooks,
        ]
        if webhooks:
            # The due index in the same round trip; an entry for a refused move is harmless.
            (reply, *_) = await self._batch([(self._transition, keys, args)], lambda pipe: self._due(pipe, call_id, at))
        else:
            reply = await self._script(self._transition, keys, args)
        status, detail, raw, *more = reply
        call = CallRecord.from_hash(call_id, orjson.loads(raw)) if raw else None
        if status != b"ok":
            raise CallError(detail.decode(), call)
        assert call is not None
        previous = CallState(detail.decode())
        if webhooks:
            self._filed(call_id)
        try:
            if previous is CallState.RINGING:
                # Only a ringing call can time out: its deadline goes when it leaves
                # ringing, answered too, so an answered call's end needs no round trip
                # here and no timeout fires for it later, only to be refused.

                def unring(pipe: Any) -> None:
                    pipe.zrem(self._keys.ring_deadlines(call_id), call_id)
                    pipe.zrem(self._keys.ringing(call.callee_user), call_id)
                    if call.state is CallState.ANSWERED:
                        self._queue_in_call(pipe, call, add=True)

                await self._batch([], unring)
            elif previous is CallState.ANSWERED and call.state.is_final:
                await self._batch([], lambda pipe: self._queue_in_call(pipe, call, add=False))
        except UNAVAILABLE:
            # The call has moved: its devices must hear of it, whatever became of these
            # indexes (other slots, maybe on a shard failing over). All mend themselves:
            # the deadline fires into the call's state check and is forgotten, the
            # callee's ringing set drops calls past their deadline, and a stale in-call
            # entry is checked against its call before it turns a call away.
            log.warning("call.indexes_not_updated", call_id=call_id, exc_info=True)
        pushed = frozenset(device.decode() for device in more[0]) if more else None
        return Transition(previous=previous, call=call, pushed=pushed)

    def _queue_in_call(self, pipe: Any, call: CallRecord, *, add: bool) -> None:
        """Both parties' in-call sets (when_busy "reject", lua/admit_call.lua), after the
        call's script: in other slots than the call. Not exact: an end that is not recorded
        here (the node gone in between) is found out when it would turn a call away, since
        the controller checks the calls it names first (CallController._still_in_call)."""
        for user in (call.caller_user, call.callee_user):
            key = self._keys.in_call(user)
            if add:
                # No call stays answered longer than its hash lives (a week + retention).
                until = now_ms() + (7 * 86400 + max(call.retention, self.retention)) * 1000
                pipe.zadd(key, {call.call_id: until})
                pipe.pexpireat(key, until, gt=True)
                pipe.pexpireat(key, until, nx=True)
            else:
                pipe.zrem(key, call.call_id)

    async def record_event(
        self,
        call_id: str,
        *,
        user: str,
        device: str,
        entry: dict[str, Any] | None = None,
        require_state: CallState | None = None,
        require_callee: bool = False,
        once_field: str = "",
        webhook: str = "",
        now: int | None = None,
    ) -> tuple[CallRecord, bool]:
        """Check the device is in the call, record `entry`; returns the call and whether
        `once_field` was set by this event (so "the first device that rang" is decided once).
        `webhook`: the event type that setting the once-field sends (call.ringing)."""
        at = now_ms() if now is None else now
        spec = self._webhook_spec(type=webhook) if webhook and once_field else ""
        keys = self._call_keys(call_id)
        if spec:
            keys.append(self._keys.webhooks(call_id))
        args: list[Any] = [
            user,
            device,
            orjson.dumps({"at": at, **entry}) if entry else "",
            require_state.value if require_state else "",
            once_field,
            at,
            "1" if require_callee else "",
            self._ops_channel,
            call_id,
            spec,
        ]
        result = await self._script(self._call_event, keys, args)
        if result[0] != b"ok":
            raise CallError(result[1].decode())
        if spec and result[2]:
            # Only the first device that rings files an event; the others' reports must not
            # make the call due for nothing. The call is in the due index already (not over:
            # looked at again every few minutes), so this is the fast path, not the record.
            await self._batch([], lambda pipe: self._due(pipe, call_id, at))
            self._filed(call_id)
        return CallRecord.from_hash(call_id, orjson.loads(result[1])), bool(result[2])

    async def status_check(
        self, call_id: str, *, user: str, device: str, node: str, via: str, at: int
    ) -> list[bytes | None] | None:
        """Fields: state, caller_user, callee_user, caller_device, answered_by_device,
        ring_deadline, ended_at, and the asker's party ("caller" or "callee"); None when
        the call is unknown to this asker. `user` "" means a capability proved `device`;
        with a user, a `device` that is not theirs in this call raises
        CallError("not_your_device") and is not recorded."""
        keys = self._call_keys(call_id)
        args: list[Any] = [user, device, at, node, via, self._ops_channel, call_id]
        if self._status_pipe is not None:
            script = self._status.script
            assert isinstance(script, (bytes, str))
            fields = await self._status_pipe.evalsha(self._status.sha, script, keys, args)
        else:
            fields = await self._status(keys=keys, args=args)
        if fields == 0:
            raise CallError("not_your_device")
        return fields  # type: ignore[no-any-return]

    async def get(self, call_id: str) -> CallRecord | None:
        fields: dict[bytes, bytes] = await self._redis.hgetall(self._keys.call(call_id))  # type: ignore[assignment]
        return _decoded(call_id, fields)

    async def timeline(self, call_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(e) for e in await self._redis.lrange(self._keys.timeline(call_id), 0, -1)]

    async def append_timeline(self, call_id: str, entries: list[dict[str, Any]]) -> None:
        """Append entries to the call's timeline, and publish them to operators."""
        await self.append_timelines([(call_id, entry) for entry in entries])

    async def append_timelines(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Append `(call_id, entry)` pairs, of any number of calls, in one pipeline; each
        call's entries keep their order, and each is published to operators."""
        by_call: dict[str, list[dict[str, Any]]] = {}
        for call_id, entry in entries:
            by_call.setdefault(call_id, []).append(entry)

        def write(pipe: Any) -> None:
            # On a cluster each call's PUBLISHes go with its RPUSH, on its shard, after it
            # (batch()): a write per shard for the whole batch. Not a PUBLISH each on its own:
            # each took a connection of its own, and a delivery log batch (64 entries and
            # more) emptied the pool of the node that took them (MaxConnectionsError;
            # `python -m bench --scale --redis-cluster`).
            for call_id, call_entries in by_call.items():
                queue_timeline(pipe, self._keys.timeline(call_id), self._ops_channel, call_id, call_entries)

        await self._batch([], write)

    async def claim_due_timeouts(
        self,
        now: int,
        lease_ms: int,
        *,
        node: str,
        bucket_lease_ms: int = 200,
        buckets: list[int] | None = None,
        limit: int = 100,
    ) -> list[str]:
        """Lease the due ring timeouts of a few buckets: by default the next BUCKETS_PER_TICK
        of this node's round, each unless another node leased it in the last
        `bucket_lease_ms`. One script per bucket: BUCKETS_PER_TICK commands a tick, however
        many nodes and buckets, in one pipeline on one Redis (one round trip); on a cluster
        a pipeline per shard, all at once (one wait; batch(), docs/deploy.md#redis-cluster)."""
        if buckets is None:
            start = self._next_bucket
            self._next_bucket = (start + BUCKETS_PER_TICK) % BUCKETS
            buckets = [(start + i) % BUCKETS for i in range(BUCKETS_PER_TICK)]
        replies = await self._batch(
            [
                (
                    self._claim,
                    [self._keys.ring_bucket(b), self._keys.ring_lease(b)],
                    [now, lease_ms, limit, node, bucket_lease_ms],
                )
                for b in buckets
            ],
        )
        return [call_id.decode() for due in replies for call_id in due]

    async def forget_timeout(self, call_id: str) -> None:
        await self._redis.zrem(self._keys.ring_deadlines(call_id), call_id)

    async def release_timeouts(self, call_ids: list[str], now: int) -> None:
        """Hand back leased ring timeouts, due now: a node that stops firing them
        does not make other nodes wait for its leases to run out. Only lowers a
        deadline, and only of a timeout still pending (XX): a fired one is gone."""
        by_bucket: dict[str, list[str]] = {}
        for call_id in call_ids:
            by_bucket.setdefault(self._keys.ring_deadlines(call_id), []).append(call_id)
        if by_bucket:

            def lower(pipe: Any) -> None:
                for key, ids in by_bucket.items():
                    pipe.zadd(key, dict.fromkeys(ids, now), xx=True, lt=True)

            await self._batch([], lower)

    async def ending_context(
        self, call: CallRecord
    ) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, dict[str, Any]]]:
        """What ending a call needs, in one round trip: the invite pushes it sent, the
        callee's devices connected now, and the callee's device records."""

        def read(pipe: Any) -> None:
            pipe.hgetall(self._keys.pushes(call.call_id))
            pipe.hgetall(self._keys.presence(call.callee_user))
            pipe.hgetall(self._keys.devices(call.callee_user))

        pushes, presence, devices = await self._batch([], read)
        return (
            {k.decode(): orjson.loads(v) for k, v in pushes.items()},
            online_devices(presence),
            {k.decode(): orjson.loads(v) for k, v in devices.items()},
        )

    async def claim_cancellations(self, call_id: str, devices: list[str], node: str) -> list[str]:
        """Which of `devices` this node is the one to send a cancellation to: an ending and
        a socket that closed unread (voip/ws.py) may both want to, on any nodes."""
        if not devices:
            return []
        key = self._keys.cancel_claims(call_id)

        def claim(pipe: Any) -> None:
            for device in devices:
                pipe.hsetnx(key, device, node)
            pipe.expire(key, self.retention)

        *won, _ = await self._batch([], claim)
        return [device for device, first in zip(devices, won, strict=True) if first]

    async def cancellation_context(self, call_id: str) -> tuple[CallRecord | None, dict[str, dict[str, Any]], set[str]]:
        """The call, the invite pushes it sent and the devices APNs took a cancellation
        for, in one round trip (one slot)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.call(call_id))
            pipe.hgetall(self._keys.pushes(call_id))
            pipe.hkeys(self._keys.cancellations(call_id))
            fields, pushes, cancelled = await pipe.execute()
        return (
            _decoded(call_id, fields),
            {k.decode(): orjson.loads(v) for k, v in pushes.items()},
            {device.decode() for device in cancelled},
        )


def queue_timeline(pipe: Any, key: str, ops_channel: str, call_id: str, entries: list[dict[str, Any]]) -> None:
    """Queue on `pipe`: the entries onto the timeline at `key`, each published to operators."""
    encoded = [orjson.dumps(e) for e in entries]
    if encoded:
        pipe.rpush(key, *encoded)
    if ops_channel:
        for entry in encoded:
            # Any cluster node takes a PUBLISH and passes it to every other: batch() sends
            # it with the RPUSH before it, on the timeline's shard.
            pipe.execute_command("PUBLISH", ops_channel, ops_message(call_id, entry))


def ops_message(call_id: str, encoded_entry: bytes) -> bytes:
    return b'{"call_id":"%s","entry":%s}' % (call_id.encode(), encoded_entry)


def _decoded(call_id: str, fields: dict[bytes, bytes]) -> CallRecord | None:
    if not fields:
        return None
    return CallRecord.from_hash(call_id, {k.decode(): v.decode() for k, v in fields.items()})
