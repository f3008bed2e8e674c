"""A node: one process's share of the service, built once by `Node.build`, in dependency
order, every part passed in through its constructor. Every node is equal; they share
nothing but Redis."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from redis.exceptions import RedisClusterException

from apnsim import APNsSimulator
from fcmsim import FCMSimulator, generate_service_account
from voip import redis_pool
from voip.auth import Authenticator
from voip.bus import Bus
from voip.call_pushes import CallPushes
from voip.clock import SYSTEM_CLOCK, Clock
from voip.controller import CallController, RingTimeouts
from voip.delivery_log import DeliveryLog
from voip.epoch import EpochWatcher
from voip.ice_servers import IceServers, parse_uris
from voip.log_throttle import RepeatedLog
from voip.ops.feed import OpsFeed
from voip.presence import Presence
from voip.push import APNsApps, APNsConfig, APNsNotifier, FCMConfig, FCMNotifier, Notifier, PlatformNotifiers
from voip.push.fcm import GOOGLE_ENDPOINT
from voip.redis_conn import RedisConnections
from voip.redis_pipe import RedisPipe, StatusPipe
from voip.settings import Settings, apns_app_table, default_app, webhook_url_list
from voip.sipcalls import SipConfig, SipGateway
from voip.stores import Stores
from voip.webhooks.delivery import WebhookDelivery
from voip.webhooks.hook import CallHook

log = structlog.get_logger(__name__)

# What a node's first PING may meet: Redis unavailable, or the cluster client's
# "cannot be connected" (with the reason: a wrong CA, password or address).
START_FAILURES: tuple[type[Exception], ...] = (*redis_pool.UNAVAILABLE, RedisClusterException)

# The embedded APNs simulator's provider key: it exists only inside this process.
SIMULATOR_TEAM_ID = "SIMTEAM001"
SIMULATOR_KEY_ID = "SIMKEY0001"
# The embedded FCM simulator's project; its service-account key exists only in this process.
FCM_SIMULATOR_PROJECT = "voip-dev-sim"

# Seconds a call's webhook outbox is kept after its last event: deliveries retry for up to
# a day (voip/webhooks/events.py), and a day more covers a node that claimed late.
WEBHOOK_OUTBOX_TTL = 2 * 86400

ReadinessCheck = Callable[[], Awaitable[object]]
"""`/readyz`: async, raises when the part is not ready."""
ReadinessDetail = Callable[[], object]
"""`/readyz`: a JSON value shown to operators, never counted against readiness."""


@dataclass(frozen=True, slots=True)
class NodeParts:
    """Parts a node may be given instead of building them from its settings."""

    notifier: Notifier | None = None
    """`None`: APNs and FCM from the settings, or the bundled simulators without credentials."""
    readiness_checks: Mapping[str, ReadinessCheck] = field(default_factory=dict)
    """Added to (or replacing) the node's own checks."""
    clock: Clock = SYSTEM_CLOCK
    """What the controller, its ring timeouts and the call's pushes read time from."""


class Node:
    def __init__(
        self,
        settings: Settings,
        *,
        auth: Authenticator,
        connections: RedisConnections,
        status_pipe: StatusPipe | None,
        stores: Stores,
        bus: Bus,
        apns_simulator: APNsSimulator | None,
        fcm_simulator: FCMSimulator | None,
        notifier: Notifier,
        apps: APNsApps | None,
        pushes: CallPushes,
        controller: CallController,
        sip: SipGateway | None,
        timeouts: RingTimeouts,
        epoch: EpochWatcher,
        presence: Presence,
        deliveries: DeliveryLog,
        ops_feed: OpsFeed,
        ice_servers: IceServers,
        readiness_checks: Mapping[str, ReadinessCheck],
        readiness_details: Mapping[str, ReadinessDetail],
        webhooks: WebhookDelivery | None = None,
        hook: CallHook | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.auth = auth
        self.connections = connections
        self.status_pipe = status_pipe
        self.stores = stores
        self.bus = bus
        # Set only without APNs credentials: pushes then go to this in-process simulator.
        self.apns_simulator = apns_simulator
        # Set only without FCM credentials (outside production): Android pushes go here.
        self.fcm_simulator = fcm_simulator
        self.notifier = notifier
        # The iOS apps this node pushes to, by bundle id; `None`: a notifier given in
        # NodeParts, which serves whatever bundle a device registers.
        self.apps = apps
        self.pushes = pushes
        self.controller = controller
        # SIP calls are served by the same process as HTTP and WebSocket (SIP_ENABLED).
        self.sip = sip
        self.timeouts = timeouts
        self.epoch = epoch
        self.presence = presence
        # Timeline entries written in batches for the whole node: each socket's "delivered"
        # entries, the SIP legs' notes.
        self.deliveries = deliveries
        self.ops_feed = ops_feed
        # VOIP_WEBHOOK_URLS: this node's share of delivering the outbox (any node delivers).
        self.webhooks = webhooks
        # VOIP_CALL_HOOK_URL: asked before a call rings (the controller holds it too).
        self.hook = hook
        # STUN and TURN for apps' media, with TURN credentials minted per request.
        self.ice_servers = ice_servers
        self.readiness_checks = dict(readiness_checks)
        self.readiness_details = dict(readiness_details)
        # Redis unavailable, however a request found out: one line per interval.
        self.redis_unavailable = RepeatedLog(log, "redis.unavailable")
        # Draining (SIGTERM): /readyz answers 503 and nothing new is taken on.
        self.draining = False
        # Each open device socket's "reconnect elsewhere, now": called at the end of a drain.
        self.sockets: dict[object, Callable[[], Coroutine[Any, Any, None]]] = {}

    @classmethod
    async def build(cls, settings: Settings, parts: NodeParts = NodeParts()) -> Node:
        """Every part, in dependency order. Nothing runs yet: `start()` starts the loops."""
        auth = Authenticator(settings.jwt_secret)
        # One pool per node, made once: no request builds a client.
        connections = RedisConnections.from_settings(settings)
        status_pipe = connections.status_pipe()
        webhook_urls = webhook_url_list(settings.webhook_urls)
        stores = Stores.open(
            connections.client,
            settings.redis_prefix,
            retention=settings.call_retention,
            history_retention=settings.history_retention,
            ops_feed=settings.ops_feed,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
            status_pipe=status_pipe,
            webhooks_ttl=WEBHOOK_OUTBOX_TTL if webhook_urls else 0,
        )
        webhooks: WebhookDelivery | None = None
        if webhook_urls:
            webhooks = WebhookDelivery(
                stores.webhooks, webhook_urls, settings.webhook_secret, clock=parts.clock, node=settings.node_id
            )
            # An event this node files is delivered at once, not at the next poll.
            stores.calls.on_webhook = webhooks.kick
        hook = (
            CallHook(
                settings.call_hook_url,
                settings.webhook_secret,
                timeout_ms=settings.call_hook_timeout_ms,
                fail_open=settings.call_hook_failure == "open",
            )
            if settings.call_hook_url
            else None
        )
        # The bus publishes over the lean pipe on one Redis or Sentinel; on a cluster each
        # channel is on its own shard, and redis-py's cluster client finds it.
        bus = Bus(
            connections.client,
            settings.redis_prefix,
            pipe=status_pipe if isinstance(status_pipe, RedisPipe) else None,
        )
        checks: dict[str, ReadinessCheck] = {"redis": connections.client.ping}
        apns_simulator: APNsSimulator | None = None
        fcm_simulator: FCMSimulator | None = None
        notifier: Notifier
        apps: APNsApps | None = None
        if parts.notifier is not None:
            notifier = parts.notifier
        else:
            if not apns_app_table(settings):
                apns_simulator = await _start_simulator()
            apns = apps = _apns_apps(settings, apns_simulator)
            # Readiness: a warm connection to APNs in each environment, for every app.
            checks["apns"] = apns.connect
            platforms: dict[str, Notifier] = {"ios": apns}
            fcm_config: FCMConfig | None = None
            if settings.fcm_credentials_file:
                fcm_config = _fcm_config(settings)
            elif settings.environment != "production":
                fcm_simulator = await _start_fcm_simulator()
                fcm_config = FCMConfig(
                    project_id=FCM_SIMULATOR_PROJECT,
                    credentials=fcm_simulator.trust(_simulator_service_account()),
                    endpoint=fcm_simulator.endpoint,
                )
            else:
                log.warning("fcm.off", note="no FCM_CREDENTIALS_FILE: Android devices get no pushes")
            if fcm_config is not None:
                fcm = FCMNotifier(fcm_config)
                # Readiness: an OAuth2 access token in hand.
                checks["fcm"] = fcm.connect
                platforms["android"] = fcm
            notifier = PlatformNotifiers(platforms)
        pushes = CallPushes(
            notifier,
            stores.calls,
            stores.devices,
            stores.push_log,
            bus,
            auth,
            public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
            node=settings.node_id,
            clock=parts.clock,
        )
        # Timeline entries written in batches for the whole node: each socket's "delivered"
        # entries, the SIP legs' notes.
        deliveries = DeliveryLog(stores.calls)
        # The gateway acts on calls through the controller, and the controller places calls
        # to SIP callees through the gateway: the controller builds it from itself.
        controller = CallController(
            stores.calls,
            stores.limits,
            bus,
            pushes=pushes,
            clock=parts.clock,
            node=settings.node_id,
            outbound=partial(_sip_gateway, settings, stores, bus, deliveries, apps) if settings.sip_enabled else None,
            ring_timeout=settings.ring_timeout,
            max_ringing_per_callee=settings.max_ringing_per_callee,
            calls_per_callee_per_minute=settings.calls_per_callee_per_minute,
            hook=hook,
        )
        sip = controller.outbound if isinstance(controller.outbound, SipGateway) else None
        bus.on_recovered = controller.retell_endings
        # Notices a Redis that came back empty; reads how Redis keeps data (docs/deploy.md).
        epoch = EpochWatcher(stores.epoch, node=settings.node_id, interval=settings.redis_epoch_interval)
        return cls(
            settings,
            auth=auth,
            connections=connections,
            status_pipe=status_pipe,
            stores=stores,
            bus=bus,
            apns_simulator=apns_simulator,
            fcm_simulator=fcm_simulator,
            notifier=notifier,
            apps=apps,
            pushes=pushes,
            controller=controller,
            sip=sip,
            timeouts=RingTimeouts(controller, clock=parts.clock),
            epoch=epoch,
            presence=Presence(stores.presence, stores.sockets, settings.node_id),
            deliveries=deliveries,
            ops_feed=OpsFeed(connections.client, stores.ops_channel, node_id=settings.node_id),
            ice_servers=IceServers(
                parse_uris(settings.turn_uris), settings.turn_secret, settings.turn_ttl, clock=parts.clock
            ),
            readiness_checks={**checks, **parts.readiness_checks},
            readiness_details={"redis": epoch.readiness_detail},
            webhooks=webhooks,
            hook=hook,
        )

    async def start(self) -> None:
        try:
            await self.connections.client.ping()
        except START_FAILURES as exc:
            # A wrong CA, password or address shows here first: one line that says which.
            log.error("node.redis_unreachable", error=str(exc) or type(exc).__name__)
            raise
        await self.epoch.start()
        await self.bus.start()
        if self.sip is not None:
            await self.sip.start()
        self.timeouts.start()
        self.presence.start()
        self.deliveries.start()
        if self.webhooks is not None:
            self.webhooks.start()

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
        log.warning(
            "node.draining",
            sockets=len(self.sockets),
            pushes=self.pushes.in_flight,
            sip_transactions=self._sip_in_flight(),
            drain_seconds=self.settings.drain_seconds,
        )
        await self.timeouts.stop()
        deadline = started + self.settings.drain_seconds
        # Two counts owned by other parts (pushes, SIP transactions), read every 50 ms
        # until the drain's deadline: no event would tell both.
        while (self.pushes.in_flight or self._sip_in_flight()) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        closing = [asyncio.create_task(close(), name="drain:close-socket") for close in list(self.sockets.values())]
        if closing:
            await asyncio.wait(closing)
        await self.deliveries.flush()
        log.warning(
            "node.drained",
            seconds=round(loop.time() - started, 3),
            sockets_closed=len(closing),
            pushes_left=self.pushes.in_flight,
            sip_transactions_left=self._sip_in_flight(),
        )

    def _sip_in_flight(self) -> int:
        return self.sip.endpoint.transactions_in_flight() if self.sip is not None else 0

    async def stop(self) -> None:
        """The reverse of `build` and `start`."""
        await self.presence.stop()
        await self.timeouts.stop()
        await self.epoch.stop()
        # Answers APNs gives now are still recorded: Redis and APNs stay open meanwhile.
        await self.pushes.wait(self.settings.drain_seconds)
        if self.sip is not None:
            await self.sip.stop()
        await self.notifier.aclose()
        if self.apns_simulator is not None:
            await self.apns_simulator.stop()
        if self.fcm_simulator is not None:
            await self.fcm_simulator.stop()
        await self.deliveries.stop()
        if self.webhooks is not None:
            # What it had in flight is delivered again by whichever node claims it next.
            await self.webhooks.stop()
        if self.hook is not None:
            await self.hook.aclose()
        await self.bus.stop()
        if self.status_pipe is not None:
            self.status_pipe.close()
        await self.connections.aclose()


def _sip_gateway(
    settings: Settings,
    stores: Stores,
    bus: Bus,
    deliveries: DeliveryLog,
    apps: APNsApps | None,
    controller: CallController,
) -> SipGateway:
    return SipGateway(
        SipConfig.from_settings(settings),
        stores=stores,
        bus=bus,
        controller=controller,
        node_id=settings.node_id,
        timeline=deliveries,
        max_devices=settings.max_devices_per_user,
        serves_app=apps.serves if apps is not None else None,
    )


async def _start_simulator() -> APNsSimulator:
    # No credentials: push to the bundled simulator, so a development node shows the
    # whole flow, pushes included, with no Apple account.
    simulator = APNsSimulator()
    await simulator.start()
    log.warning(
        "apns.simulator",
        endpoint=simulator.endpoint,
        note="no APNS_KEY_FILE or APNS_APPS: VoIP pushes go to the bundled APNs simulator",
    )
    return simulator


async def _start_fcm_simulator() -> FCMSimulator:
    # No credentials: Android pushes go to the bundled FCM simulator, with a throwaway
    # service account; no Firebase project needed.
    simulator = FCMSimulator()
    await simulator.start()
    log.warning(
        "fcm.simulator",
        endpoint=simulator.endpoint,
        note="no FCM_CREDENTIALS_FILE: Android pushes go to the bundled FCM simulator",
    )
    return simulator


@functools.cache
def _simulator_service_account() -> dict[str, Any]:
    """One throwaway key per process (an RSA key costs tens of ms to make); each embedded
    simulator trusts it with its own token_uri."""
    return generate_service_account(FCM_SIMULATOR_PROJECT, "http://127.0.0.1/token")


def _fcm_config(settings: Settings) -> FCMConfig:
    with open(settings.fcm_credentials_file) as key_file:
        credentials = json.load(key_file)
    return FCMConfig(
        project_id=settings.fcm_project_id,
        credentials=credentials,
        endpoint=settings.fcm_endpoint or GOOGLE_ENDPOINT,
        ca_file=settings.fcm_ca_file or None,
    )


def _apns_apps(settings: Settings, simulator: APNsSimulator | None) -> APNsApps:
    """One notifier per app of the settings (its own key, provider tokens, connections);
    with the bundled simulator, one that serves every bundle (its key may push to any)."""
    if simulator is None:
        notifiers = {
            bundle_id: APNsNotifier(
                APNsConfig(
                    bundle_id=bundle_id,
                    key_id=app.key_id,
                    team_id=app.team_id,
                    key_file=app.key_file,
                    endpoint=settings.apns_endpoint or None,
                    ca_file=settings.apns_ca_file or None,
                )
            )
            for bundle_id, app in apns_app_table(settings).items()
        }
        return APNsApps(notifiers, default=default_app(settings))
    key = simulator.create_key(SIMULATOR_TEAM_ID, SIMULATOR_KEY_ID)
    embedded = APNsNotifier(
        APNsConfig(
            bundle_id=settings.apns_bundle_id,
            key_id=key.key_id,
            team_id=key.team_id,
            key_pem=key.private_pem,
            endpoint=simulator.endpoint,
            ca_file=str(simulator.ca_file),
        )
    )
    return APNsApps({}, default=settings.apns_bundle_id, any_app=embedded)
