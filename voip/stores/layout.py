r"""Where everything lives in Redis: every key and channel, its owner, its hash tag and its
TTL, and the Lua loader. This table is the one place that says so (docs/deploy.md shows it).

Every key starts with the configured prefix. The part in braces is the Redis Cluster hash
tag: the keys one script or MULTI touches share it, so each touches one slot
(tests/test_key_slots.py checks every script). Owner: the module that writes the key.

| Key | Type | Hash tag | Owner | TTL |
|---|---|---|---|---|
| `{c:<call_id>}:call` | hash: the call (NewCall, lua/) | call | stores/calls.py | ring timeout + retention; a week + retention once answered; retention once ended |
| `{c:<call_id>}:timeline` | list: JSON transitions, pushes, status checks | call | stores/calls.py | as the call |
| `{c:<call_id>}:pushes` | hash: device_id -> JSON invite push target | call | stores/calls.py | as the call at creation |
| `{c:<call_id>}:cancellations` | hash: device_id -> when APNs took its cancellation (ms) | call | stores/push_log.py | as the call |
| `{c:<call_id>}:cancel_claims` | hash: device_id -> node that sends its cancellation (the ending's, or an unheard ending's: one of them) | call | stores/calls.py | retention |
| `{u:<user_id>}:devices` | hash: device_id -> JSON device record | user | stores/devices.py | none (deleted with the device) |
| `{u:<user_id>}:presence` | hash: device_id -> "<node>\|<expires_ms>" | user | stores/presence.py | entries expire by their own stamp (voip/presence.py) |
| `{u:<user_id>}:last_push` | hash: device_id -> JSON last push and its answer | user | stores/push_log.py | retention |
| `{u:<user_id>}:sockets` | zset: "<device_id>\|<socket>" by opened (ms) | user | stores/sockets.py | retention |
| `{u:<user_id>}:ringing` | zset: call_id by ring deadline (ms) | user | stores/limits.py | latest deadline + 1 s |
| `{u:<user_id>}:call_starts` | zset: call_id by creation (ms), the last minute's | user | stores/limits.py | 60 s |
| `{u:<user_id>}:sip_bindings` | hash: device_id -> JSON SIP binding | user | stores/sip.py | the longest binding's expiry |
| `{u:<user_id>}:sip_ha1` | hash: "<realm>\|<algorithm>" -> HA1 | user | stores/sip.py | none |
| `{u:<user_id>}:sip_ringing` | hash: call_id -> JSON ringing call | user | stores/sip.py | the longest ring |
| `{u:<user_id>}:sip_fork:<call_id>:<device_id>` | string: this phone was INVITEd | user | stores/sip.py | the ring |
| `{c:<call_id>}:history` | string: JSON, the call as the parties' histories show it (state, parties, times, `refused`), written by the call scripts with each state | call | stores/calls.py (lua/), read by stores/history.py | VOIP_HISTORY_RETENTION of the node that created the call, from its last change |
| `{u:<user_id>}:history` | zset: call_id by start (ms), the user's calls (placed and received), written before the call exists | user | stores/limits.py (lua/admit_call.lua: the callee's; the same round trip: the caller's) | VOIP_HISTORY_RETENTION; entries older are trimmed on each add |
| `{u:<user_id>}:history_seen` | zset: one member, `seen`, scored by the latest `up_to` of `POST /v1/calls/seen` (ms) | user | stores/history.py | VOIP_HISTORY_RETENTION |
| `{u:<user_id>}:availability` | hash: `dnd` (1/0), `until` (ms or empty), `when_busy` (ring/reject) | user | stores/history.py (AvailabilityStore), read by lua/admit_call.lua | none |
| `{u:<user_id>}:in_call` | zset: call_id by the longest it may stay answered (ms): the user's answered calls | user | stores/calls.py (after the transition, from the call's own state) | the latest entry's |
| `{rt:<n>}:ring_deadlines` | zset: call_id by ring deadline (ms), bucket n = crc32(call_id) % 16 | bucket | stores/calls.py | none (entries leave when the call stops ringing, or the timeout fires) |
| `{rt:<n>}:lease` | string: the node working bucket n now | bucket | stores/calls.py | one tick (RingTimeouts' interval) |
| `{ci:<n>}:calls` | zset: call_id by creation (ms), operators' index, bucket n as above | bucket | stores/calls.py, stores/ops.py | none (trimmed past the longest call's life on each creation) |
| `{c:<call_id>}:webhooks` | list: the call's webhook events (JSON), appended by the script that changes the call | call | lua/ (create_call, transition, call_event, webhook_event) | 2 days from the last event (deliveries retry for up to 24 h) |
| `{c:<call_id>}:webhook_sent` | hash: per webhook URL (its hash) how many events it has, its failures, next attempt | call | stores/webhooks.py | as the outbox |
| `{c:<call_id>}:webhook_lock` | string: the node delivering this call's events now (one at a time: in order) | call | stores/webhooks.py | the delivery lease |
| `{wd:<n>}:webhooks_due` | zset: call_id by when its events are due (ms), bucket n as above; a claimed call's score is its lease | bucket | lua/, stores/webhooks.py | none (a call leaves once final and every event delivered) |
| `webhook_failures` | hash: webhook URL (its hash) -> JSON: failing since, last error, for /ops | itself | stores/webhooks.py | none (an entry goes on the URL's next success) |
| `sip_nonce:<nonce>` | string: the highest digest nonce count accepted | itself | stores/nonces.py | SIP_NONCE_TTL |
| `ops_ticket:<sha256>` | string: an operator's one-use live-feed ticket | itself | stores/ops.py | VOIP_OPS_TICKET_TTL |
| `epoch` | string: the deployment epoch, written once | itself | stores/epoch.py | none |

The ring deadlines and the calls index are spread over BUCKETS hash-tagged buckets, so
that on a cluster no one shard holds them all; a node works a few buckets a tick, each
under a short lease (lua/claim_timeouts.lua, CallStore.claim_due_timeouts); a tick's
claims are one batch(): one round trip on one Redis, a write per shard at once on a cluster.

Channels:

| Channel | Published by | Kind |
|---|---|---|
| `{u:<user_id>}:bus` | voip/bus.py, lua/create_call.lua | sharded (SPUBLISH/SSUBSCRIBE): the user's frames, to whichever node holds their devices |
| `ops` | the call scripts, stores/calls.py | plain PUBLISH: every timeline entry, for operators' live feed. It is published from inside each call's script, on that call's shard; a sharded channel would have to hash to every call's slot at once. On a cluster a plain PUBLISH reaches every node, so a node's one subscription may sit on any of them, and moves to another at once when its node dies (voip/ops/feed.py) |
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, Literal, cast

from redis._parsers.response_callbacks import get_response_callbacks
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncCoreCommands, AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    NoScriptError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from voip.redis_pipe import Packed, RedisPipe, command

# A script to run: (script, keys, args).
Scripted = tuple[AsyncScript, list[str], list[Any]]


def load_script(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(resources.files("voip").joinpath("lua", f"{name}.lua").read_text())


def clustered(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


async def batch(
    redis: Redis,
    scripts: list[Scripted],
    queue: Callable[[Any], object] | None = None,
    *,
    pipe: RedisPipe | None = None,
) -> list[Any]:
    """The scripts' replies, then those of the commands `queue` puts on a pipeline, in that
    order. On one Redis: one pipeline, one round trip, the scripts as bare EVALSHAs; over
    the node's lean pipe (`pipe`, voip/redis_pipe.py) when given, else through redis-py. On
    a cluster: one pipelined write per shard touched, holding that shard's scripts then its
    commands in the order given, the shards at once (on_shards()): one wait. A command
    therefore runs after the scripts and commands before it on its own slot; nothing is
    ordered across shards (CallStore.create publishes call.incoming after its script)."""
    if clustered(redis):
        queued = Queued()
        if queue is not None:
            queue(queued)
        return await on_shards(cast(RedisCluster, redis), scripts, queued.commands)
    if pipe is not None:
        return await on_pipe(pipe, scripts, queue)
    async with redis.pipeline(transaction=False) as pipeline:
        for script, keys, args in scripts:
            # A bare EVALSHA: passed as `client=pipeline`, redis-py sends SCRIPT EXISTS first.
            pipeline.evalsha(script.sha, len(keys), *keys, *args)
        if queue is not None:
            queue(pipeline)
        replies: list[Any] = await pipeline.execute(raise_on_error=False)
    for index, (script, keys, args) in enumerate(scripts):
        # A Redis that lost its script cache (restarted, failed over) answered NOSCRIPT;
        # the rest ran: run that script again through redis-py, which loads it.
        if isinstance(replies[index], NoScriptError):
            replies[index] = await script(keys=keys, args=args)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


# A command queued for a cluster: its words and redis-py's options for its reply.
Command = tuple[tuple[Any, ...], dict[str, Any]]


# How redis-py reads each command's reply in the shapes the stores take (an HGETALL's as a
# dict, an HSETNX's as a bool): its rules for RESP2, the protocol the lean pipe speaks.
_RESP2_REPLIES = {name.upper(): read for name, read in get_response_callbacks(2, legacy_responses=True).items()}


def packed_script(script: AsyncScript, keys: list[str], args: list[Any]) -> Packed:
    """A script as the lean pipe runs it: a bare EVALSHA, and its source for NOSCRIPT."""
    source = script.script
    assert isinstance(source, (bytes, str))
    return command("EVALSHA", script.sha, len(keys), *keys, *args), source


async def on_pipe(pipe: RedisPipe, scripts: list[Scripted], queue: Callable[[Any], object] | None = None) -> list[Any]:
    """batch() on one Redis over the lean pipe: the same commands in the same order, in one
    write, and the same replies: each command's reply read by redis-py's own rule for it
    (an HGETALL's pairs as a dict, an HSETNX's as a bool), the first error raised."""
    queued = Queued()
    if queue is not None:
        queue(queued)
    commands = [packed_script(*scripted) for scripted in scripts]
    commands += [(command(*words), None) for words, _ in queued.commands]
    replies = await pipe.execute(commands)
    for index, (words, options) in enumerate(queued.commands, start=len(scripts)):
        reply, read = replies[index], _RESP2_REPLIES.get(str(words[0]).upper())
        if read is not None and not isinstance(reply, Exception):
            options.pop("keys", None)  # only for redis-py's client-side cache, as in its parse_response
            replies[index] = read(reply, **options)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class Queued(AsyncCoreCommands):
    """Commands written down, not sent: the pipeline a `queue` of batch() fills on a cluster."""

    _is_async_client: Literal[True] = True
    _event_dispatcher: Any = None  # the commands' protocol asks for one; nothing is sent

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def execute_command(self, *args: Any, **options: Any) -> Queued:
        self.commands.append((args, options))
        return self


# Sent to any node: every node of a cluster passes a plain PUBLISH on to all the others.
_ANY_NODE = frozenset({"PUBLISH"})
# A command that met one of these in its shard's pipeline is sent again on its own through
# the cluster client, which follows it: a slot moved or migrating (MOVED, ASK, TRYAGAIN), a
# shard failing over or gone (the client reads the slot map again, then retries).
_SEND_AGAIN = (AskError, TryAgainError, ClusterDownError, ConnectionError, TimeoutError)


@dataclass
class _Step:
    command: PipelineCommand
    node: ClusterNode | None  # None: its slot is not in the client's map; sent on its own
    again: Callable[[], Awaitable[Any]]
    script: bool


async def on_shards(redis: RedisCluster, scripts: list[Scripted], commands: list[Command]) -> list[Any]:
    """Scripts and commands on a cluster: one pipeline per primary they touch (its scripts
    first, then its commands, each group in the order given), all written at once, so the
    whole costs one wait, whatever the shards. Keyed commands name their key (or sharded
    channel) first; a PUBLISH goes with the command before it (a timeline's entries are
    published after they are written).

    Not redis-py's cluster pipeline: that one, meeting a dead primary, closes every
    connection of the client, and the scripts and commands in flight on healthy shards lose
    their replies (docs/deploy.md#redis-cluster). Here each shard's pipeline is on one
    connection of that shard's own pool; what fails on one shard is sent again on its own
    (MOVED and the like, a dropped connection: _SEND_AGAIN; NOSCRIPT for a script, which
    redis-py then loads), and what ran elsewhere stays answered."""
    await redis.initialize()  # nothing once the slot map is known; after a failure, read again
    steps: list[_Step] = []

    def placed(key: Any) -> ClusterNode | None:
        try:
            return redis.get_node_from_key(key)
        except SlotNotCoveredError:
            return None

    for script, keys, args in scripts:
        steps.append(
            _Step(
                PipelineCommand(len(steps), "EVALSHA", script.sha, len(keys), *keys, *args),
                placed(keys[0]),
                partial(script, keys=keys, args=args),
                True,
            )
        )
    for words, options in commands:
        if str(words[0]).upper() in _ANY_NODE:
            node = steps[-1].node if steps else redis.get_random_node()
        else:
            node = placed(words[1])
        steps.append(
            _Step(
                PipelineCommand(len(steps), *words, **options),
                node,
                partial(redis.execute_command, *words, **options),
                False,
            )
        )
    shards: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
    for step in steps:
        if step.node is not None:
            shards.setdefault(step.node.name, (step.node, []))[1].append(step.command)
    written = await asyncio.gather(
        *(node.execute_pipeline(pipelined) for node, pipelined in shards.values()), return_exceptions=True
    )
    for (_, pipelined), outcome in zip(shards.values(), written, strict=True):
        if isinstance(outcome, BaseException):
            # The write failed (or the pool was empty): none of the shard's replies came.
            if isinstance(outcome, MaxConnectionsError) or not isinstance(outcome, (ConnectionError, TimeoutError)):
                raise outcome
            for command in pipelined:
                command.result = outcome
    replies: list[Any] = []
    for step in steps:
        reply = step.command.result
        if step.node is None or isinstance(reply, _SEND_AGAIN) or (step.script and isinstance(reply, NoScriptError)):
            reply = await step.again()
        replies.append(reply)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


# Buckets of the ring deadlines and of the calls index. Fixed: a call's bucket is a hash
# of its id, so changing this strands the calls already filed.
BUCKETS = 16


def bucket_of(call_id: str) -> int:
    return zlib.crc32(call_id.encode()) % BUCKETS


class KeyLayout:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.epoch = f"{prefix}epoch"
        self.ops_channel = f"{prefix}ops"

    def ring_bucket(self, bucket: int) -> str:
        return f"{self.prefix}{{rt:{bucket}}}:ring_deadlines"

    def ring_lease(self, bucket: int) -> str:
        return f"{self.prefix}{{rt:{bucket}}}:lease"

    def ring_deadlines(self, call_id: str) -> str:
        """The bucket that holds this call's ring deadline."""
        return self.ring_bucket(bucket_of(call_id))

    def calls_bucket(self, bucket: int) -> str:
        return f"{self.prefix}{{ci:{bucket}}}:calls"

    def calls_index(self, call_id: str) -> str:
        """The bucket of the operators' calls index that holds this call."""
        return self.calls_bucket(bucket_of(call_id))

    def bus_channel(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:bus"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:call"

    def timeline(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:timeline"

    def pushes(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:pushes"

    def cancellations(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:cancellations"

    def cancel_claims(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:cancel_claims"

    def webhooks(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:webhooks"

    def webhook_sent(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:webhook_sent"

    def webhook_lock(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:webhook_lock"

    def webhooks_due_bucket(self, bucket: int) -> str:
        return f"{self.prefix}{{wd:{bucket}}}:webhooks_due"

    def webhooks_due(self, call_id: str) -> str:
        """The bucket of the webhook due index that holds this call."""
        return self.webhooks_due_bucket(bucket_of(call_id))

    def webhook_failures(self) -> str:
        return f"{self.prefix}webhook_failures"

    def devices(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:devices"

    def presence(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:presence"

    def last_push(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:last_push"

    def sockets(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:sockets"

    def ringing(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:ringing"

    def call_starts(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:call_starts"

    def sip_bindings(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:sip_bindings"

    def sip_ha1(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:sip_ha1"

    def sip_ringing(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:sip_ringing"

    def sip_fork(self, user_id: str, call_id: str, device_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:sip_fork:{call_id}:{device_id}"

    # Call history and availability (issue 14, items 4 and 5): stores/history.py.
    def history_record(self, call_id: str) -> str:
        return f"{self.prefix}{{c:{call_id}}}:history"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:history"

    def history_seen(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:history_seen"

    def availability(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:availability"

    def in_call(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:in_call"

    def sip_nonce(self, nonce: str) -> str:
        return f"{self.prefix}sip_nonce:{nonce}"

    def ops_ticket(self, digest: str) -> str:
        return f"{self.prefix}ops_ticket:{digest}"
