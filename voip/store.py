"""Call and device state in Redis, shared by every node.

Key layout (every key starts with the configured prefix; the part in braces is the
Redis Cluster hash tag, so each script touches one slot):

    {c:<call_id>}:call       hash   the call (see NewCall and the scripts in lua/)
    {c:<call_id>}:timeline   list   JSON entries: transitions, deliveries, status checks
    {u:<user_id>}:devices    hash   device_id -> JSON device record
    {u:<user_id>}:presence   hash   device_id -> "<node>|<expires_ms>" (sockets and SIP bindings;
                                    renewed by the holding node's heartbeat, see voip/presence.py)
    ring_deadlines           zset   call_id scored by ring deadline (ms)
    calls                    zset   call_id scored by creation time (ms), for operators
    {u:<user_id>}:last_push  hash   device_id -> JSON of the device's last push and its answer
    {u:<user_id>}:sockets    zset   "<device_id>|<socket id>" scored by when it opened (ms): open WebSockets
    {u:<user_id>}:ringing    zset   call_id scored by ring deadline (ms): calls ringing this callee
    {u:<user_id>}:call_starts zset  call_id scored by creation time (ms), the last minute's calls to this callee
    epoch                    string the deployment epoch, written once (voip/epoch.py)

A call hash carries its own `ring_deadline` (ms) and `retention` (s), set by the node
that created it: every node applies those, never its own settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from voip.redis_pipe import RedisPipe
from voip.calls import Action, CallState, Party, transitions_for


def now_ms() -> int:
    return int(time.time() * 1000)


def _script(name: str) -> str:
    return resources.files("voip").joinpath("lua", f"{name}.lua").read_text()


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
    def from_hash(cls, call_id: str, fields: dict[str, Any]) -> "CallRecord":
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


@dataclass(frozen=True, slots=True)
class Transition:
    previous: CallState
    call: CallRecord


class Store:
    def __init__(
        self, redis: Redis, prefix: str, retention: int, *, ops_feed: bool = True,
        wait_replicas: int = 0, wait_timeout_ms: int = 100,
    ) -> None:
        self.redis = redis
        # VOIP_REDIS_WAIT_REPLICAS: a new call is acknowledged by this many replicas
        # (WAIT, bounded) before the caller hears of it (docs/deploy.md#redis-sentinel).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.prefix = prefix
        self.retention = retention
        # Every timeline entry is also published here, from inside the same script, so
        # operators see each change live at no extra round trip.
        self.ops_channel = f"{prefix}ops" if ops_feed else ""
        self._create = redis.register_script(_script("create_call"))
        self._transition = redis.register_script(_script("transition"))
        self._call_event = redis.register_script(_script("call_event"))
        self._status = redis.register_script(_script("status_check"))
        self._claim = redis.register_script(_script("claim_timeouts"))
        self._drop_token = redis.register_script(_script("drop_voip_token"))
        self._admit = redis.register_script(_script("admit_call"))
        self._open_socket = redis.register_script(_script("open_socket"))
        self._record_cancellation = redis.register_script(_script("record_cancellation"))
        self._presence_set = redis.register_script(_script("presence_set"))
        self._presence_clear = redis.register_script(_script("presence_clear"))
        self.deadlines_key = f"{prefix}ring_deadlines"
        # Call ids by creation time (ms), for operators' listings (voip/ops/index.py).
        self.calls_key = f"{prefix}calls"
        # No call outlives this: unended, ring timeout (<= 600 s) + retention after its
        # creation; ended, retention after its end.
        self.calls_horizon_ms = (2 * retention + 600) * 1000
        # The hottest command's own connection (redis_pipe.py); redis-py when None.
        self.status_pipe: RedisPipe | None = None

    # Keys -----------------------------------------------------------------------------

    def call_keys(self, call_id: str) -> list[str]:
        tag = f"{self.prefix}{{c:{call_id}}}"
        return [f"{tag}:call", f"{tag}:timeline"]

    def pushes_key(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:pushes"

    def cancellations_key(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:cancellations"

    def devices_key(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:devices"

    def presence_key(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:presence"

    def callee_limit_keys(self, user_id: str) -> list[str]:
        tag = f"{self.prefix}{{u:{user_id}}}"
        return [f"{tag}:ringing", f"{tag}:call_starts"]

    def user_channel(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    # Calls ----------------------------------------------------------------------------

    async def admit_call(
        self,
        call_id: str,
        callee_user: str,
        *,
        now: int,
        ring_deadline: int,
        max_ringing: int,
        per_minute: int,
        reach: bool = False,
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Count the call against its callee's limits, in one script on the callee's slot,
        so that every node sees the same counts; raises CallRefused over a limit. With
        `reach`, also returns `reachable_devices(callee_user)`, read in the same round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if reach:
                pipe.hgetall(self.devices_key(callee_user))
                pipe.hgetall(self.presence_key(callee_user))
            await self._admit(
                keys=self.callee_limit_keys(callee_user),
                args=[call_id, now, ring_deadline, max_ringing, per_minute],
                client=pipe,
            )
            *read, (reason, retry_after) = await pipe.execute()
        if reason != b"ok":
            raise CallRefused(reason.decode(), int(retry_after))
        if not reach:
            return {}, set()
        devices, presence = read
        return {k.decode(): orjson.loads(v) for k, v in devices.items()}, _online(presence)

    async def release_call(self, call_id: str, callee_user: str, *, uncount: bool = False) -> None:
        """The call no longer rings its callee; `uncount` also takes it off the minute's count
        (a call that was never created)."""
        ringing, starts = self.callee_limit_keys(callee_user)
        if uncount:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(ringing, call_id)
                pipe.zrem(starts, call_id)
                await pipe.execute()
        else:
            await self.redis.zrem(ringing, call_id)

    async def create_call(
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
    ) -> bool:
        """Create the call if its id is free; `announce` is published (channel, message)
        by the same script once the call exists."""
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
        }
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
        async with self.redis.pipeline(transaction=False) as pipe:
            pushes_json = {device: orjson.dumps(target).decode() for device, target in (pushes or {}).items()}
            await self._create(
                keys=[*self.call_keys(call_id), self.pushes_key(call_id)],
                args=[orjson.dumps(fields), orjson.dumps(entry), ttl, self.ops_channel, call_id,
                      orjson.dumps(pushes_json), *(announce or ("", ""))],
                client=pipe,
            )
            # NX: if the id is taken, the existing call's deadline must stay as it is.
            pipe.zadd(self.deadlines_key, {call_id: ring_deadline}, nx=True)
            # The index is in another slot than the call, so it cannot be in the script.
            pipe.zadd(self.calls_key, {call_id: created_at}, nx=True)
            pipe.zremrangebyscore(self.calls_key, "-inf", created_at - self.calls_horizon_ms)
            if self.wait_replicas:
                # Same connection as the writes above, so WAIT covers exactly them. Best
                # effort: past the timeout the call goes ahead, unreplicated.
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            created, *_ = await pipe.execute()
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
    ) -> Transition:
        """Apply `action` atomically; raises CallError when the call or its state refuses."""
        if user:
            moves = {
                party.value: {k.value: v.value for k, v in transitions_for(action, party).items()}
                for party in (Party.CALLER, Party.CALLEE)
            }
        else:
            moves = {
                Party.SYSTEM.value: {
                    k.value: v.value for k, v in transitions_for(action, Party.SYSTEM).items()
                }
            }
        status, detail, raw = await self._transition(
            keys=self.call_keys(call_id),
            args=[
                orjson.dumps(moves),
                user,
                device,
                now_ms(),
                node,
                action.value,
                self.retention,  # only for a call that does not carry its own
                orjson.dumps(note) if note else "",
                self.ops_channel,
                call_id,
            ],
        )
        call = CallRecord.from_hash(call_id, orjson.loads(raw)) if raw else None
        if status != b"ok":
            raise CallError(detail.decode(), call)
        assert call is not None
        previous = CallState(detail.decode())
        if previous is CallState.RINGING and call.state is not CallState.RINGING:
            async with self.redis.pipeline(transaction=False) as pipe:
                if call.state.is_final:
                    pipe.zrem(self.deadlines_key, call_id)
                pipe.zrem(self.callee_limit_keys(call.callee_user)[0], call_id)
                await pipe.execute()
        elif call.state.is_final:
            await self.redis.zrem(self.deadlines_key, call_id)
        return Transition(previous=previous, call=call)

    async def call_event(
        self,
        call_id: str,
        *,
        user: str,
        device: str,
        entry: dict[str, Any] | None = None,
        require_state: CallState | None = None,
        require_callee: bool = False,
        once_field: str = "",
    ) -> tuple[CallRecord, bool]:
        """Check the device is in the call, record `entry`; returns the call and whether
        `once_field` was set by this event (so "the first device that rang" is decided once)."""
        at = now_ms()
        result = await self._call_event(
            keys=self.call_keys(call_id),
            args=[
                user,
                device,
                orjson.dumps({"at": at, **entry}) if entry else "",
                require_state.value if require_state else "",
                once_field,
                at,
                "1" if require_callee else "",
                self.ops_channel,
                call_id,
            ],
        )
        if result[0] != b"ok":
            raise CallError(result[1].decode())
        return CallRecord.from_hash(call_id, orjson.loads(result[1])), bool(result[2])

    async def status_check(
        self, call_id: str, *, user: str, device: str, node: str, via: str, at: int
    ) -> list[bytes | None] | None:
        """Fields: state, caller_user, callee_user, caller_device, answered_by_device,
        ring_deadline, ended_at, and the asker's party ("caller" or "callee"); None when
        the call is unknown to this asker. `user` "" means a capability proved `device`;
        with a user, a `device` that is not theirs in this call raises
        CallError("not_your_device") and is not recorded."""
        keys = self.call_keys(call_id)
        args: list[Any] = [user, device, at, node, via, self.ops_channel, call_id]
        if self.status_pipe is not None:
            script = self._status.script
            assert isinstance(script, (bytes, str))
            fields = await self.status_pipe.evalsha(self._status.sha, script, keys, args)
        else:
            fields = await self._status(keys=keys, args=args)
        if fields == 0:
            raise CallError("not_your_device")
        return fields  # type: ignore[no-any-return]

    async def recent_calls_to(self, user_id: str) -> list[str]:
        """The calls made to this callee in the last minute (the rate limit's record)."""
        ids: list[bytes] = await self.redis.zrange(self.callee_limit_keys(user_id)[1], 0, -1)  # type: ignore[assignment]
        return [call_id.decode() for call_id in ids]

    async def get_call(self, call_id: str) -> CallRecord | None:
        fields: dict[bytes, bytes] = await self.redis.hgetall(self.call_keys(call_id)[0])  # type: ignore[assignment]
        if not fields:
            return None
        return CallRecord.from_hash(call_id, {k.decode(): v.decode() for k, v in fields.items()})

    async def timeline(self, call_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(e) for e in await self.redis.lrange(self.call_keys(call_id)[1], 0, -1)]

    async def append_timeline(self, call_id: str, entries: list[dict[str, Any]]) -> None:
        await self.append_and_read(call_id, entries)

    async def append_and_read(
        self,
        call_id: str,
        entries: list[dict[str, Any]],
        *,
        cancellation_of: str | None = None,
        last_push: tuple[str, str, dict[str, Any]] | None = None,
        cancelled: tuple[str, int] | None = None,
    ) -> tuple[CallRecord | None, int | None]:
        """Append timeline entries (published to operators too); with `last_push`
        (user, device, entry), keep it as that device's last push; with
        `cancellation_of`, read back the call and when APNs accepted a cancellation for
        that device; with `cancelled` (device, at), record that APNs accepted one: all in
        one round trip."""
        encoded = [orjson.dumps(e) for e in entries]
        async with self.redis.pipeline(transaction=False) as pipe:
            if encoded:
                pipe.rpush(self.call_keys(call_id)[1], *encoded)
            if self.ops_channel:
                for entry in encoded:
                    pipe.publish(self.ops_channel, b'{"call_id":"%s","entry":%s}' % (call_id.encode(), entry))
            if last_push is not None:
                user_id, device_id, push = last_push
                pipe.hset(self.last_push_key(user_id), device_id, orjson.dumps(push))
            if cancelled is not None:
                await self._record_cancellation(
                    keys=[self.cancellations_key(call_id), self.call_keys(call_id)[0]],
                    args=[cancelled[0], cancelled[1], self.retention], client=pipe,
                )
            if cancellation_of is not None:
                pipe.hgetall(self.call_keys(call_id)[0])
                pipe.hget(self.cancellations_key(call_id), cancellation_of)
            replies = await pipe.execute()
        if cancellation_of is None:
            return None, None
        fields, cancelled_at = replies[-2], replies[-1]
        call = (
            CallRecord.from_hash(call_id, {k.decode(): v.decode() for k, v in fields.items()})
            if fields
            else None
        )
        return call, int(cancelled_at) if cancelled_at else None

    async def claim_due_timeouts(self, now: int, lease_ms: int, limit: int = 100) -> list[str]:
        due = await self._claim(keys=[self.deadlines_key], args=[now, lease_ms, limit])
        return [call_id.decode() for call_id in due]

    async def forget_timeout(self, call_id: str) -> None:
        await self.redis.zrem(self.deadlines_key, call_id)

    async def release_timeouts(self, call_ids: list[str], now: int) -> None:
        """Hand back leased ring timeouts, due now: a node that stops firing them
        does not make other nodes wait for its leases to run out. Only lowers a
        deadline, and only of a timeout still pending (XX): a fired one is gone."""
        if call_ids:
            await self.redis.zadd(self.deadlines_key, dict.fromkeys(call_ids, now), xx=True, lt=True)

    async def ending_context(
        self, call: CallRecord
    ) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, dict[str, Any]]]:
        """What ending a call needs, in one round trip: the invite pushes it sent, the
        callee's devices connected now, and the callee's device records."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.pushes_key(call.call_id))
            pipe.hgetall(self.presence_key(call.callee_user))
            pipe.hgetall(self.devices_key(call.callee_user))
            pushes, presence, devices = await pipe.execute()
        return (
            {k.decode(): orjson.loads(v) for k, v in pushes.items()},
            _online(presence),
            {k.decode(): orjson.loads(v) for k, v in devices.items()},
        )

    async def drop_voip_token(self, user_id: str, device_id: str, token: str, before_ms: int | None) -> bool:
        dropped = await self._drop_token(
            keys=[self.devices_key(user_id)],
            args=[device_id, token, "" if before_ms is None else before_ms, now_ms()],
        )
        return bool(dropped)

    # Devices --------------------------------------------------------------------------

    async def put_device(self, user_id: str, device_id: str, record: dict[str, Any], cap: int) -> list[str]:
        """Store a device; drop the least recently registered beyond `cap`. Returns the dropped."""
        key = self.devices_key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, device_id, orjson.dumps(record))
            pipe.hgetall(key)
            _, everything = await pipe.execute()
        if len(everything) <= cap:
            return []
        records = sorted(
            ((k.decode(), orjson.loads(v)) for k, v in everything.items()),
            key=lambda item: item[1]["updated_at"],
        )
        dropped = [device for device, _ in records[: len(records) - cap] if device != device_id]
        if dropped:
            await self.redis.hdel(key, *dropped)
        return dropped

    async def get_device(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.devices_key(user_id), device_id)
        return orjson.loads(raw) if raw else None

    async def list_devices(self, user_id: str) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.devices_key(user_id))  # type: ignore[assignment]
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def delete_device(self, user_id: str, device_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.devices_key(user_id), device_id)
            pipe.hdel(self.last_push_key(user_id), device_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    def last_push_key(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:last_push"

    async def record_last_push(self, user_id: str, device_id: str, entry: dict[str, Any]) -> None:
        await self.redis.hset(self.last_push_key(user_id), device_id, orjson.dumps(entry))

    def sockets_key(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:sockets"

    async def open_socket(self, user_id: str, socket: str, cap: int) -> list[str]:
        """Count an open WebSocket of the user's; returns the oldest ones beyond `cap`,
        already uncounted, for their nodes to close. A socket left behind by a node that
        died is the oldest, so it is the first to go."""
        evicted = await self._open_socket(
            keys=[self.sockets_key(user_id)], args=[socket, now_ms(), cap, self.retention]
        )
        return [s.decode() for s in evicted]

    async def close_socket(self, user_id: str, socket: str) -> None:
        await self.redis.zrem(self.sockets_key(user_id), socket)

    async def set_presence(self, user_id: str, device_id: str, node: str, ttl_ms: int) -> None:
        now = now_ms()
        await self._presence_set(
            keys=[self.presence_key(user_id)], args=[now, device_id, f"{node}|{now + ttl_ms}"]
        )

    async def renew_presence(self, held: dict[str, list[str]], node: str, ttl_ms: int) -> None:
        """One node's heartbeat: every device it holds (user -> device ids), in one pipeline."""
        now = now_ms()
        value = f"{node}|{now + ttl_ms}"
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, devices in held.items():
                args: list[Any] = [now]
                for device_id in devices:
                    args += [device_id, value]
                await self._presence_set(keys=[self.presence_key(user_id)], args=args, client=pipe)
            await pipe.execute()

    async def clear_presence(self, user_id: str, device_id: str, node: str) -> None:
        await self._presence_clear(keys=[self.presence_key(user_id)], args=[device_id, node, now_ms()])

    async def reachable_devices(self, user_id: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """The user's registered devices and the ids of devices connected right now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.devices_key(user_id))
            pipe.hgetall(self.presence_key(user_id))
            devices, presence = await pipe.execute()
        return {k.decode(): orjson.loads(v) for k, v in devices.items()}, _online(presence)


def _online(presence: dict[bytes, bytes]) -> set[str]:
    now = now_ms()
    return {device.decode() for device, value in presence.items() if int(value.decode().rsplit("|", 1)[1]) > now}
