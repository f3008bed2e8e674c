"""Which devices this node holds a socket for, kept in Redis by one heartbeat.

A presence entry says "device D is connected to node N until T". T is at most
`PRESENCE_TTL_MS` ahead, and only N's heartbeat (every `HEARTBEAT` seconds, all of its
devices in one pipeline) moves it on. So when N dies, even by `kill -9`, its devices count
as offline within `PRESENCE_TTL_MS`, and a call that ends meanwhile sends them the
cancellation push they need. An entry (or a socket's place in its user's count of open
sockets) that could not be removed when its socket closed, Redis busy or away, is removed
by a later heartbeat, never left behind.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import structlog

from voip.log_throttle import RepeatedLog
from voip.stores import PresenceStore, SocketStore
from voip.tasks import stop_task

log = structlog.get_logger(__name__)

PRESENCE_TTL_MS = 12_000  # offline within 12 s of the last heartbeat: inside the 15 s the issue allows
HEARTBEAT = 3.0


class Presence:
    def __init__(
        self,
        presence: PresenceStore,
        sockets: SocketStore,
        node_id: str,
        *,
        ttl_ms: int = PRESENCE_TTL_MS,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self._presence = presence
        self._sockets = sockets
        self._node = node_id
        self.ttl_ms = ttl_ms
        self._heartbeat = heartbeat
        # (user, device) -> sockets this node holds for it (a device may briefly hold two)
        self._held: Counter[tuple[str, str]] = Counter()
        self._to_clear: set[tuple[str, str]] = set()
        # (user, socket id): open-socket counts that Redis could not drop when they closed
        self._to_uncount: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._beat_failed = RepeatedLog(log, "presence.heartbeat_failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-heartbeat")

    async def stop(self) -> None:
        await stop_task(self._task)

    def held(self) -> int:
        return len(self._held)

    def pending_clears(self) -> int:
        return len(self._to_clear) + len(self._to_uncount)

    async def hold(self, user_id: str, device_id: str) -> None:
        """The device has a socket here. Raises if Redis could not be told; the caller
        then undoes its setup with `release`."""
        key = (user_id, device_id)
        self._held[key] += 1
        self._to_clear.discard(key)
        await self._presence.set(user_id, device_id, self._node, self.ttl_ms)

    async def release(self, user_id: str, device_id: str) -> None:
        """One socket of the device's here closed. Never raises: an entry Redis could not
        drop now is dropped by the heartbeat."""
        key = (user_id, device_id)
        self._held[key] -= 1
        if self._held[key] > 0:
            return
        del self._held[key]
        try:
            await self._presence.clear(user_id, device_id, self._node)
        except Exception:
            self._to_clear.add(key)

    async def uncount_socket(self, user_id: str, socket_id: str) -> None:
        """A socket closed: drop it from the user's open-socket count (`SocketStore.open`).
        Never raises; retried by the heartbeat."""
        try:
            await self._sockets.close(user_id, socket_id)
        except Exception:
            self._to_uncount.add((user_id, socket_id))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._beat_failed.failed(devices=len(self._held), to_clear=len(self._to_clear))
            else:
                self._beat_failed.ok()

    async def _beat(self) -> None:
        renewing = list(self._held)
        by_user: dict[str, list[str]] = {}
        for user_id, device_id in renewing:
            by_user.setdefault(user_id, []).append(device_id)
        if by_user:
            await self._presence.renew(by_user, self._node, self.ttl_ms)
        # A socket that closed while the renewal was on its way may have had its entry
        # cleared before the renewal wrote it again: clear it again.
        self._to_clear.update(key for key in renewing if key not in self._held)
        for key in list(self._to_clear):
            if key in self._held:  # reconnected meanwhile: the renewal above holds it
                self._to_clear.discard(key)
                continue
            await self._presence.clear(*key, self._node)
            self._to_clear.discard(key)
        for user_id, socket_id in list(self._to_uncount):
            await self._sockets.close(user_id, socket_id)
            self._to_uncount.discard((user_id, socket_id))
