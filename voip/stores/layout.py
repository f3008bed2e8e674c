"""Where everything lives in Redis: every key and channel name, and the Lua loader.

Every key starts with the configured prefix; the part in braces is the Redis Cluster
hash tag, so each script touches one slot:

    {c:<call_id>}:call           hash   the call (see NewCall and the scripts in lua/)
    {c:<call_id>}:timeline       list   JSON entries: transitions, pushes, status checks
    {c:<call_id>}:pushes         hash   device_id -> JSON invite push target
    {c:<call_id>}:cancellations  hash   device_id -> when APNs accepted its cancellation (ms)
    {u:<user_id>}:devices        hash   device_id -> JSON device record
    {u:<user_id>}:presence       hash   device_id -> "<node>|<expires_ms>" (sockets and SIP bindings;
                                        renewed by the holding node's heartbeat, see voip/presence.py)
    {u:<user_id>}:last_push      hash   device_id -> JSON of the device's last push and its answer
    {u:<user_id>}:sockets        zset   "<device_id>|<socket id>" scored by when it opened (ms): open WebSockets
    {u:<user_id>}:ringing        zset   call_id scored by ring deadline (ms): calls ringing this callee
    {u:<user_id>}:call_starts    zset   call_id scored by creation time (ms), the last minute's calls to this callee
    {u:<user_id>}:sip_bindings   hash   device_id -> JSON SIP binding (voip/sipcalls/registrar.py)
    {u:<user_id>}:sip_ha1        hash   "<realm>|<algorithm>" -> HA1 of the user's SIP password
    {u:<user_id>}:sip_ringing    hash   call_id -> JSON ringing call, for phones that register late
    {u:<user_id>}:sip_fork:<call_id>:<device_id>  string  this phone was INVITEd into this call
    ring_deadlines               zset   call_id scored by ring deadline (ms)
    calls                        zset   call_id scored by creation time (ms), for operators
    sip_nonce:<nonce>            string the highest digest nonce count accepted
    ops_ticket:<sha256>          string an operator's one-use live-feed ticket
    epoch                        string the deployment epoch, written once (voip/epoch.py)

Channels: `ops` (every timeline entry, for operators' live feed).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


def load_script(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(resources.files("voip").joinpath("lua", f"{name}.lua").read_text())


async def execute_with_script(
    pipe: Pipeline, script: AsyncScript, keys: list[Any], args: list[Any], *,
    build: Callable[[Pipeline], None] = lambda pipe: None,
) -> list[Any]:
    """Execute `pipe` with `script` queued first, then what `build` queues, in one round
    trip: a bare EVALSHA, where a script passed as `client=pipe` costs a SCRIPT EXISTS
    round trip before every pipeline. A Redis that lost its script cache (restarted,
    failed over) answers NOSCRIPT: the others ran, so the script is loaded and run, then
    what `build` queues runs again (so it must be idempotent: reads, NX adds, a WAIT)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)
    build(pipe)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    if isinstance(results[0], NoScriptError):
        pipe.script_load(script.script)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        build(pipe)
        results[0] = (await pipe.execute(raise_on_error=False))[1]
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def queue_script(pipe: Pipeline, script: AsyncScript, keys: list[Any], args: list[Any]) -> None:
    """Queue `script` as a bare EVALSHA: passed as `client=pipe`, redis-py sends a SCRIPT
    EXISTS round trip before the pipeline. Check the replies with `rerun_unloaded`."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def rerun_unloaded(script: AsyncScript, replies: list[Any], calls: list[tuple[list[Any], list[Any]]]) -> None:
    """For the replies of scripts queued with `queue_script` (in the order of `calls`,
    their keys and args): where Redis had lost its script cache (restarted, failed over)
    and answered NOSCRIPT, run that call again through the script, which loads it."""
    for reply, (keys, args) in zip(replies, calls, strict=True):
        if isinstance(reply, NoScriptError):
            await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply


class KeyLayout:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ring_deadlines = f"{prefix}ring_deadlines"
        self.calls = f"{prefix}calls"
        self.epoch = f"{prefix}epoch"
        self.ops_channel = f"{prefix}ops"

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
