"""What the node can learn of how its Redis keeps data (docs/deploy.md): persistence,
eviction, replicas. Read once at start and again after every reconnect; shown in
`/readyz` details and warned about in the log, never a reason to refuse traffic.

CONFIG may be renamed away or denied by an ACL on a managed Redis: each setting that
cannot be read is "unknown", and INFO (also deniable) fills in what it can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)

UNKNOWN = "unknown"
CONFIG_NAMES = ("appendonly", "appendfsync", "save", "maxmemory-policy", "maxmemory")


@dataclass(frozen=True, slots=True)
class Durability:
    """How Redis keeps data; "unknown" where it would not say."""

    appendonly: str = UNKNOWN
    appendfsync: str = UNKNOWN
    save: str = UNKNOWN  # the RDB snapshot schedule; "" = none
    maxmemory_policy: str = UNKNOWN
    maxmemory: str = UNKNOWN  # bytes; "0" = no limit
    replicas: str = UNKNOWN  # connected replicas, as INFO counts them
    warnings: tuple[str, ...] = field(default=())

    def detail(self) -> dict[str, Any]:
        return {
            "appendonly": self.appendonly,
            "appendfsync": self.appendfsync,
            "save": self.save,
            "maxmemory_policy": self.maxmemory_policy,
            "maxmemory": self.maxmemory,
            "replicas": self.replicas,
            "warnings": list(self.warnings),
        }


def durability_warnings(appendonly: str, appendfsync: str, save: str, policy: str, replicas: str) -> tuple[str, ...]:
    """What could lose calls and devices; nothing for what is unknown."""
    found = []
    if appendonly == "no":
        if save == "":
            found.append(
                "persistence off (appendonly no, no RDB snapshots): a Redis restart loses every call and device"
            )
        elif save != UNKNOWN:
            found.append(f"appendonly no: a Redis restart loses the writes since the last RDB snapshot (save {save!r})")
        else:
            found.append("appendonly no: a Redis restart loses the writes since the last RDB snapshot, if any")
    elif appendonly == "yes" and appendfsync == "no":
        found.append("appendfsync no: a crash of the Redis host loses the writes the kernel had not flushed (~30 s)")
    if policy not in (UNKNOWN, "noeviction"):
        # volatile-* too: every call key carries a TTL, so it is a candidate.
        found.append(f"maxmemory-policy {policy}: Redis may evict calls and devices when full (needs noeviction)")
    if replicas == "0":
        found.append("no replica: losing the Redis host loses its data")
    return tuple(found)


async def _config(redis: Redis, name: str) -> str:
    try:
        reply: dict[Any, Any] = await redis.config_get(name)
    except (RedisConnectionError, RedisTimeoutError):
        raise
    except RedisError:  # renamed away, or NOPERM
        return UNKNOWN
    for key, value in reply.items():
        if _text(key) == name:
            return _text(value)
    return UNKNOWN


async def _info(redis: Redis, section: str) -> dict[str, Any]:
    try:
        info: dict[str, Any] = await redis.info(section)
    except (RedisConnectionError, RedisTimeoutError):
        raise
    except RedisError:
        return {}
    return info


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def inspect_durability(redis: Redis) -> Durability:
    """Raises only when Redis cannot be reached at all."""
    settings = {name: await _config(redis, name) for name in CONFIG_NAMES}
    persistence = await _info(redis, "persistence")
    replication = await _info(redis, "replication")
    appendonly = settings["appendonly"]
    if appendonly == UNKNOWN and "aof_enabled" in persistence:
        appendonly = "yes" if int(persistence["aof_enabled"]) else "no"
    replicas = _text(replication["connected_slaves"]) if "connected_slaves" in replication else UNKNOWN
    return Durability(
        appendonly=appendonly,
        appendfsync=settings["appendfsync"],
        save=settings["save"],
        maxmemory_policy=settings["maxmemory-policy"],
        maxmemory=settings["maxmemory"],
        replicas=replicas,
        warnings=durability_warnings(
            appendonly, settings["appendfsync"], settings["save"], settings["maxmemory-policy"], replicas
        ),
    )


def log_durability(durability: Durability) -> None:
    for warning in durability.warnings:
        log.warning("redis.durability", warning=warning)
    if UNKNOWN in (durability.appendonly, durability.maxmemory_policy):
        log.info(
            "redis.durability_unknown",
            note="CONFIG GET refused: persistence or eviction not checked",
            appendonly=durability.appendonly,
            maxmemory_policy=durability.maxmemory_policy,
        )
