"""A node: one process's share of the service, wired once. Every node is equal; they
share nothing but Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from apnsim import APNsSimulator
from voip.auth import Authenticator
from voip.bus import Bus
from voip.call_pushes import CallPushes
from voip.controller import CallController, RingTimeouts
from voip.delivery_log import DeliveryLog
from voip.epoch import EpochWatcher
from voip.log_throttle import RepeatedLog
from voip.presence import Presence
from voip.push import APNsConfig, APNsNotifier
from voip.redis_conn import RedisConnections
from voip.settings import Settings
from voip.sipcalls import SipConfig, SipGateway
from voip.stores import Stores

log = structlog.get_logger(__name__)

# The embedded APNs simulator's provider key: it exists only inside this process.
SIMULATOR_TEAM_ID = "SIMTEAM001"
SIMULATOR_KEY_ID = "SIMKEY0001"


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.auth = Authenticator(settings.jwt_secret)
        # One pool per node, made once: no request builds a client.
        self.connections = RedisConnections.from_settings(settings)
        self.status_pipe = self.connections.status_pipe()
        self.stores = Stores.open(
            self.connections.client, settings.redis_prefix, retention=settings.call_retention,
            ops_feed=settings.ops_feed, wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms, status_pipe=self.status_pipe,
        )
        self.presence = Presence(self.stores.presence, self.stores.sockets, self.node_id)
        # Each socket's "delivered" timeline entries, written in batches for the whole node.
        self.deliveries = DeliveryLog(self.stores.calls)
        # Redis unavailable, however a request found out: one line per interval.
        self.redis_unavailable = RepeatedLog(log, "redis.unavailable")
        self.bus = Bus(self.connections.client, settings.redis_prefix)
        self.controller = CallController(
            self.stores.calls, self.stores.limits, self.bus, node=self.node_id, ring_timeout=settings.ring_timeout,
            max_ringing_per_callee=settings.max_ringing_per_callee,
            calls_per_callee_per_minute=settings.calls_per_callee_per_minute,
        )
        self.bus.on_recovered = self.controller.retell_endings
        self.timeouts = RingTimeouts(self.controller)
        # Notices a Redis that came back empty; reads how Redis keeps data (docs/deploy.md).
        self.epoch = EpochWatcher(
            self.stores.epoch, node=self.node_id, interval=settings.redis_epoch_interval
        )
        self.apns_simulator: APNsSimulator | None = None
        self.notifier: APNsNotifier | None = None
        # SIP calls are served by the same process as HTTP and WebSocket.
        self.sip: SipGateway | None = None
        # Draining (SIGTERM): /readyz answers 503 and nothing new is taken on.
        self.draining = False
        # Each open device socket's "reconnect elsewhere, now": called at the end of a drain.
        self.sockets: dict[object, Callable[[], Coroutine[Any, Any, None]]] = {}
        if settings.sip_enabled:
            self.sip = SipGateway(
                SipConfig.from_settings(settings), stores=self.stores, bus=self.bus,
                controller=self.controller, node_id=self.node_id,
                max_devices=settings.max_devices_per_user,
            )

    @property
    def public_url(self) -> str:
        return self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"

    async def start(self) -> None:
        await self.connections.client.ping()
        await self.epoch.start()
        await self.bus.start()
        self.deliveries.start()
        self.notifier = APNsNotifier(await self._apns_config())
        self.controller.pushes = CallPushes(
            self.notifier,
            self.stores.calls,
            self.stores.devices,
            self.stores.push_log,
            self.bus,
            self.auth,
            public_url=self.public_url,
            node=self.node_id,
        )
        if self.sip is not None:
            await self.sip.start()
        self.timeouts.start()
        self.presence.start()

    async def apns_ready(self) -> None:
        """Readiness: a warm connection to APNs in each environment, or an exception."""
        if self.notifier is None:
            raise RuntimeError("the APNs sender has not started")
        await self.notifier.connect()

    async def _apns_config(self) -> APNsConfig:
        settings = self.settings
        if settings.apns_key_file:
            return APNsConfig(
                bundle_id=settings.apns_bundle_id,
                key_id=settings.apns_key_id,
                team_id=settings.apns_team_id,
                key_file=settings.apns_key_file,
                endpoint=settings.apns_endpoint or None,
                ca_file=settings.apns_ca_file or None,
            )
        # No credentials: push to the bundled simulator, so a development node shows
        # the whole flow, pushes included, with no Apple account.
        self.apns_simulator = APNsSimulator()
        await self.apns_simulator.start()
        key = self.apns_simulator.create_key(SIMULATOR_TEAM_ID, SIMULATOR_KEY_ID)
        log.warning("apns.simulator", endpoint=self.apns_simulator.endpoint,
                    note="no APNS_KEY_FILE: VoIP pushes go to the bundled APNs simulator")
        return APNsConfig(
            bundle_id=settings.apns_bundle_id,
            key_id=key.key_id,
            team_id=key.team_id,
            key_pem=key.private_pem,
            endpoint=self.apns_simulator.endpoint,
            ca_file=str(self.apns_simulator.ca_file),
        )

    async def drain(self) -> None:
        """Leave the cluster gently (SIGTERM): refuse new sockets and new SIP calls and
        registrations, hand ring timeouts to the other nodes, wait up to
        VOIP_DRAIN_SECONDS for pushes and SIP transactions in flight, then tell every
        device socket to reconnect (to another node) and close it with 1012."""
        if self.draining:
            return
        self.draining = True
        if self.sip is not None:
            self.sip.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.warning("node.draining", sockets=len(self.sockets), pushes=self._pushes_in_flight(),
                    sip_transactions=self._sip_in_flight(), drain_seconds=self.settings.drain_seconds)
        await self.timeouts.stop()
        deadline = started + self.settings.drain_seconds
        while (self._pushes_in_flight() or self._sip_in_flight()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        closing = [asyncio.create_task(close(), name="drain:close-socket") for close in list(self.sockets.values())]
        if closing:
            await asyncio.wait(closing)
        await self.deliveries.flush()
        log.warning("node.drained", seconds=round(loop.time() - started, 3), sockets_closed=len(closing),
                    pushes_left=self._pushes_in_flight(), sip_transactions_left=self._sip_in_flight())

    def _pushes_in_flight(self) -> int:
        return self.controller.pushes.in_flight if self.controller.pushes is not None else 0

    def _sip_in_flight(self) -> int:
        return self.sip.endpoint.transactions_in_flight() if self.sip is not None else 0

    async def stop(self) -> None:
        await self.presence.stop()
        await self.epoch.stop()
        await self.timeouts.stop()
        if self.controller.pushes is not None:
            # Answers APNs gives now are still recorded: Redis and APNs stay open meanwhile.
            await self.controller.pushes.wait(self.settings.drain_seconds)
        if self.sip is not None:
            await self.sip.stop()
        if self.notifier is not None:
            await self.notifier.aclose()
        if self.apns_simulator is not None:
            await self.apns_simulator.stop()
        await self.deliveries.stop()
        await self.bus.stop()
        if self.status_pipe is not None:
            self.status_pipe.close()
        await self.connections.aclose()
