"""Everything a node keeps in Redis, one small store per concern, over one key layout
(layout.py) and one connection pool. `Stores.open` builds them all, once per node."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from voip.redis_pipe import RedisPipe, StatusPipe
from voip.stores.calls import CalleeUnavailable, CallError, CallRecord, CallRefused, CallStore, Transition
from voip.stores.devices import DeviceStore
from voip.stores.epoch import EpochStore
from voip.stores.history import Availability, AvailabilityStore, HistoryStore
from voip.stores.layout import KeyLayout
from voip.stores.limits import CalleeLimits
from voip.stores.nonces import NonceCounts
from voip.stores.ops import OpsStore
from voip.stores.presence import PresenceStore
from voip.stores.push_log import PushLog
from voip.stores.sip import SipStore
from voip.stores.sockets import SocketStore
from voip.stores.webhooks import WebhookOutbox

__all__ = [
    "Availability",
    "AvailabilityStore",
    "CallError",
    "CallRecord",
    "CallRefused",
    "CallStore",
    "CalleeLimits",
    "CalleeUnavailable",
    "DeviceStore",
    "EpochStore",
    "HistoryStore",
    "KeyLayout",
    "NonceCounts",
    "OpsStore",
    "PresenceStore",
    "PushLog",
    "SipStore",
    "SocketStore",
    "Stores",
    "Transition",
    "WebhookOutbox",
]


@dataclass(frozen=True, slots=True)
class Stores:
    keys: KeyLayout
    # Where every timeline entry is published for operators; "" when the feed is off.
    ops_channel: str
    calls: CallStore
    devices: DeviceStore
    push_log: PushLog
    presence: PresenceStore
    sockets: SocketStore
    limits: CalleeLimits
    sip: SipStore
    nonces: NonceCounts
    ops: OpsStore
    epoch: EpochStore
    history: HistoryStore
    availability: AvailabilityStore
    webhooks: WebhookOutbox

    @classmethod
    def open(
        cls,
        redis: Redis,
        prefix: str,
        *,
        retention: int,
        ops_feed: bool = True,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        status_pipe: StatusPipe | None = None,
        history_retention: int = 30 * 86400,
        webhooks_ttl: int = 0,
    ) -> Stores:
        keys = KeyLayout(prefix)
        ops_channel = keys.ops_channel if ops_feed else ""
        # The call path's pipelines over the lean pipe on one Redis or Sentinel, not on a cluster.
        lean = status_pipe if isinstance(status_pipe, RedisPipe) else None
        return cls(
            keys=keys,
            ops_channel=ops_channel,
            calls=CallStore(
                redis,
                keys,
                retention=retention,
                ops_channel=ops_channel,
                wait_replicas=wait_replicas,
                wait_timeout_ms=wait_timeout_ms,
                status_pipe=status_pipe,
                history_retention=history_retention,
                webhooks_ttl=webhooks_ttl,
            ),
            devices=DeviceStore(redis, keys, pipe=lean),
            push_log=PushLog(redis, keys, retention=retention, ops_channel=ops_channel, pipe=status_pipe),
            presence=PresenceStore(redis, keys),
            sockets=SocketStore(redis, keys, retention=retention),
            limits=CalleeLimits(redis, keys, history_retention=history_retention, pipe=lean),
            sip=SipStore(redis, keys),
            nonces=NonceCounts(redis, keys),
            ops=OpsStore(redis, keys),
            epoch=EpochStore(redis, keys),
            history=HistoryStore(redis, keys, retention=history_retention),
            availability=AvailabilityStore(redis, keys),
            webhooks=WebhookOutbox(redis, keys, ttl=webhooks_ttl),
        )
