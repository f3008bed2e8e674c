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
| `{rt:<n>}:ring_deadlines` | zset: call_id by ring deadline (ms), bucket n = crc32(call_id) % 16 | bucket | stores/calls.py | none (entries leave when the call stops ringing, or the timeout fires) |
| `{rt:<n>}:lease` | string: the node working bucket n now | bucket | stores/calls.py | one tick (RingTimeouts' interval) |
| `{ci:<n>}:calls` | zset: call_id by creation (ms), operators' index, bucket n as above | bucket | stores/calls.py, stores/ops.py | none (trimmed past the longest call's life on each creation) |
| `sip_nonce:<nonce>` | string: the highest digest nonce count accepted | itself | stores/nonces.py | SIP_NONCE_TTL |
| `ops_ticket:<sha256>` | string: an operator's one-use live-feed ticket | itself | stores/ops.py | VOIP_OPS_TICKET_TTL |
| `epoch` | string: the deployment epoch, written once | itself | stores/epoch.py | none |

The ring deadlines and the calls index are spread over BUCKETS hash-tagged buckets, so
that on a cluster no one shard holds them all; a node works a few buckets a tick, each
under a short lease (lua/claim_timeouts.lua, CallStore.claim_due_timeouts); a tick's
claims are one batch(): one round trip on one Redis.

Channels:

| Channel | Published by | Kind |
|---|---|---|
| `{u:<user_id>}:bus` | voip/bus.py, lua/create_call.lua | sharded (SPUBLISH/SSUBSCRIBE): the user's frames, to whichever node holds their devices |
| `ops` | the call scripts, stores/calls.py | plain PUBLISH: every timeline entry, for operators' live feed. It is published from inside each call's script, on that call's shard; a sharded channel would have to hash to every call's slot at once. On a cluster a plain PUBLISH reaches every node, so a node's one subscription may sit on any of them, and moves to another at once when its node dies (voip/ops/feed.py) |
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

# A script to run: (script, keys, args).
Scripted = tuple[AsyncScript, list[str], list[Any]]


def load_script(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(resources.files("voip").joinpath("lua", f"{name}.lua").read_text())


def clustered(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


async def batch(redis: Redis, scripts: list[Scripted], queue: Callable[[Any], object] | None = None) -> list[Any]:
    """The scripts' replies, then those of the commands `queue` puts on a pipeline, in that
    order. On one Redis: one pipeline, one round trip, the scripts as bare EVALSHAs. On a
    cluster redis-py refuses scripts in a pipeline (its issue #2914): the scripts run first,
    concurrently, then the rest as one cluster pipeline (a round trip per shard it touches).
    A cluster pipeline that meets a dead primary closes every connection of the client, and
    the commands in flight on the healthy shards fail with them (ClusterDownError); a single
    command only drops the dead shard's: keep the scripts, and what runs often, out of one."""
    if clustered(redis):
        ran = list(await asyncio.gather(*(script(keys=keys, args=args) for script, keys, args in scripts)))
        if queue is not None:
            async with redis.pipeline(transaction=False) as pipe:
                queue(pipe)
                ran += await pipe.execute()
        return ran
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in scripts:
            # A bare EVALSHA: passed as `client=pipe`, redis-py sends SCRIPT EXISTS first.
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if queue is not None:
            queue(pipe)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for index, (script, keys, args) in enumerate(scripts):
        # A Redis that lost its script cache (restarted, failed over) answered NOSCRIPT;
        # the rest ran: run that script again through redis-py, which loads it.
        if isinstance(replies[index], NoScriptError):
            replies[index] = await script(keys=keys, args=args)
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

    def sip_nonce(self, nonce: str) -> str:
        return f"{self.prefix}sip_nonce:{nonce}"

    def ops_ticket(self, digest: str) -> str:
        return f"{self.prefix}ops_ticket:{digest}"
