"""The deployment epoch: one key, `<prefix>epoch`, written once (SET NX, no TTL) by the
first node that finds it missing. A Redis that comes back empty (restarted without
persistence, flushed, replaced by a blank server) has lost it with everything else; a
node that sees its epoch vanish or change knows that calls, devices and SIP bindings
are gone, says so (`redis.data_lost`, `voip_redis_data_lost_total`, `/v1/ops/summary`)
and writes a new epoch that records the loss, so that every node, even one started
later, can show when it happened.

Checked at start, every `VOIP_REDIS_EPOCH_INTERVAL` seconds, and at once when Redis
answers again after failing. The same moments re-read Redis's durability settings: a
node may have reconnected to another server.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from prometheus_client import Counter

from voip.clock import now_ms
from voip.redis_durability import Durability, log_durability
from voip.stores import EpochStore
from voip.tasks import stop_task

log = structlog.get_logger(__name__)

DATA_LOST = Counter(
    "voip_redis_data_lost_total",
    "Times this node found Redis had come back without its data (the epoch key gone or replaced)",
)
# While Redis does not answer, look again this often, so that a restart is noticed soon.
RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Epoch:
    id: str
    created_at: int
    created_by: str
    # When this epoch replaced a lost one: what was lost and when it was noticed.
    replaces: dict[str, Any] | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "created_at": self.created_at, "created_by": self.created_by, "replaces": self.replaces}
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Epoch:
        try:
            value = orjson.loads(raw)
            return cls(
                str(value["id"]),
                int(value["created_at"]),
                str(value.get("created_by", "")),
                value.get("replaces") if isinstance(value.get("replaces"), dict) else None,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # Not ours to read, yet still a value that may change: its bytes are its id.
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            return cls(text[:64], 0, "")


class EpochWatcher:
    def __init__(self, store: EpochStore, *, node: str, interval: float) -> None:
        self._store = store
        self.node = node
        self.interval = interval
        self.epoch: Epoch | None = None
        self.durability = Durability()
        self.losses = 0  # noticed by this node since it started
        self._last_seen = 0  # ms: when this node last read its epoch back intact
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="redis-epoch")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def check(self) -> None:
        raw = await self._store.read()
        now = now_ms()
        if self.epoch is None:  # this node's first look: adopt what is there
            self.epoch = Epoch.decode(raw) if raw is not None else await self._write(None, now)
            log.info(
                "redis.epoch", epoch=self.epoch.id, created_at=self.epoch.created_at, created_by=self.epoch.created_by
            )
            await self._inspect()
        else:
            found = Epoch.decode(raw) if raw is not None else None
            if found is None or found.id != self.epoch.id:
                await self._lost(found, now)
        self._last_seen = now

    def readiness_detail(self) -> dict[str, Any]:
        return self.durability.detail()

    def summary(self) -> dict[str, Any]:
        """For `/v1/ops/summary` and the page's header."""
        epoch = self.epoch
        return {
            "epoch": {"id": epoch.id, "created_at": epoch.created_at} if epoch else None,
            # The last loss, as recorded in the epoch by whichever node noticed it first.
            "data_lost": epoch.replaces if epoch else None,
            "data_lost_noticed_here": self.losses,
            "durability_warnings": list(self.durability.warnings),
        }

    async def _lost(self, found: Epoch | None, now: int) -> None:
        assert self.epoch is not None
        previous = self.epoch
        loss = {
            "previous_epoch": previous.id,
            "previous_created_at": previous.created_at,
            "last_seen_at": self._last_seen,  # the data was there then
            "noticed_at": now,
            "noticed_by": self.node,
        }
        # Another node may have written the new epoch already: adopt it, still a loss here.
        self.epoch = found if found is not None else await self._write(loss, now)
        self.losses += 1
        DATA_LOST.inc()
        log.error(
            "redis.data_lost",
            note="Redis came back without this deployment's data: calls, "
            "devices and SIP bindings written before are gone",
            lost_between=[self._last_seen, now],
            previous_epoch=previous.id,
            node=self.node,
            epoch=self.epoch.id,
            epoch_written_by=self.epoch.created_by,
        )
        await self._inspect()

    async def _write(self, replaces: dict[str, Any] | None, now: int) -> Epoch:
        epoch = Epoch(secrets.token_hex(8), now, self.node, replaces)
        if await self._store.write_once(epoch.encode()):
            return epoch
        raw = await self._store.read()
        return Epoch.decode(raw) if raw is not None else epoch

    async def _inspect(self) -> None:
        self.durability = await self._store.durability()
        log_durability(self.durability)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RETRY_SECONDS if self._failing else self.interval)
            try:
                await self.check()
                if self._failing:  # Redis answers again: it may be another server now
                    self._failing = False
                    log.info("redis.epoch_check_recovered", epoch=self.epoch.id if self.epoch else None)
                    await self._inspect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._failing:  # once per outage, not every half second
                    log.warning("redis.epoch_check_failed", error=type(exc).__name__)
                self._failing = True
