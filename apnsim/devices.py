"""Devices and APNs' store-and-forward: one pending push per device token, held until expiry."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from apnsim.clock import Clock
from apnsim.reasons import Reason


class Environment(StrEnum):
    SANDBOX = "sandbox"
    PRODUCTION = "production"


DEFAULT_RETENTION = 30 * 24 * 60 * 60
"""How long a push without ``apns-expiration`` is kept for an offline device."""


@dataclass(frozen=True)
class Push:
    """A notification APNs accepted (answered 200)."""

    apns_id: str
    unique_id: str | None
    token: str
    topic: str
    push_type: str
    priority: int
    expiration: int | None
    collapse_id: str | None
    payload: dict[str, Any]
    accepted_at: float
    connection_id: int

    def expires_at(self) -> float:
        """Moment after which APNs no longer delivers it; 0 means "now or never"."""
        if self.expiration is None:
            return self.accepted_at + DEFAULT_RETENTION
        return float(self.expiration)

    def is_expired(self, now: float) -> bool:
        return now > self.expires_at()


@dataclass(frozen=True)
class Delivery:
    push: Push
    delivered_at: float
    stored: bool
    """Handed over when the device came online rather than immediately."""
    late: bool
    """Handed over although its expiration had passed (a field-observed fault)."""


class DropCause(StrEnum):
    DISPLACED = "displaced"
    EXPIRED = "expired"
    NOT_STORED = "not-stored"  # apns-expiration: 0 to an offline device


@dataclass(frozen=True)
class Drop:
    push: Push
    cause: DropCause
    dropped_at: float


@dataclass(frozen=True)
class Invalidation:
    reason: Reason  # Unregistered or ExpiredToken
    timestamp_ms: int


DeliveryCallback = Callable[[Delivery], None]


@dataclass(eq=False)
class Device:
    """One app install's token: APNs' unit of routing."""

    token: str
    topic: str
    environment: Environment
    online: bool = True
    auto_created: bool = False
    invalidation: Invalidation | None = None
    pending: Push | None = None
    inbox: list[Delivery] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    _callbacks: list[DeliveryCallback] = field(default_factory=list, repr=False)
    _queues: list[asyncio.Queue[Delivery]] = field(default_factory=list, repr=False)
    _registry: DeviceRegistry | None = field(default=None, repr=False)

    def subscribe(self) -> asyncio.Queue[Delivery]:
        """A queue that receives every later delivery to this device."""
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def on_delivery(self, callback: DeliveryCallback) -> None:
        self._callbacks.append(callback)

    async def next_delivery(self, timeout: float = 5.0) -> Delivery:
        queue = self.subscribe()
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        finally:
            self._queues.remove(queue)

    def go_online(self) -> Delivery | None:
        """Come online; a stored push, if still deliverable, is handed over now."""
        assert self._registry is not None, "device is not registered with a simulator"
        return self._registry.bring_online(self)

    def go_offline(self) -> None:
        self.online = False

    def unregister(self, timestamp_ms: int | None = None) -> None:
        """The token stops being valid for its topic: APNs then answers 410 Unregistered."""
        self._invalidate(Reason.UNREGISTERED, timestamp_ms)

    def expire_token(self, timestamp_ms: int | None = None) -> None:
        """The token expired (410 ExpiredToken)."""
        self._invalidate(Reason.EXPIRED_TOKEN, timestamp_ms)

    def _invalidate(self, reason: Reason, timestamp_ms: int | None) -> None:
        assert self._registry is not None, "device is not registered with a simulator"
        if timestamp_ms is None:
            timestamp_ms = int(self._registry.clock() * 1000)
        self.invalidation = Invalidation(reason, timestamp_ms)
        self.pending = None

    def collapsed_inbox(self) -> list[Delivery]:
        """The inbox as Notification Center shows it: a newer collapse id replaces an older one."""
        shown: list[Delivery] = []
        for delivery in self.inbox:
            collapse_id = delivery.push.collapse_id
            if collapse_id is not None:
                shown = [d for d in shown if d.push.collapse_id != collapse_id]
            shown.append(delivery)
        return shown

    def _hand_over(self, delivery: Delivery) -> None:
        self.inbox.append(delivery)
        for queue in self._queues:
            queue.put_nowait(delivery)
        for callback in self._callbacks:
            callback(delivery)


LateDeliveryPolicy = Callable[[Device], bool]


class DeviceRegistry:
    def __init__(self, clock: Clock, late_delivery: LateDeliveryPolicy | None = None) -> None:
        self.clock = clock
        self._late_delivery = late_delivery or (lambda device: False)
        self._devices: dict[str, Device] = {}

    def __contains__(self, token: str) -> bool:
        return token.lower() in self._devices

    def __iter__(self) -> Iterator[Device]:
        return iter(list(self._devices.values()))

    def get(self, token: str) -> Device | None:
        return self._devices.get(token.lower())

    def add(
        self,
        topic: str,
        environment: Environment,
        token: str | None = None,
        online: bool = True,
        auto_created: bool = False,
    ) -> Device:
        token = (token or secrets.token_hex(32)).lower()
        if token in self._devices:
            raise ValueError(f"device token {token} is already registered")
        device = Device(
            token=token, topic=topic, environment=environment, online=online, auto_created=auto_created, _registry=self
        )
        self._devices[token] = device
        return device

    def remove(self, token: str) -> None:
        self._devices.pop(token.lower(), None)

    def accept(self, device: Device, push: Push) -> Delivery | None:
        """Route an accepted push: deliver now, or store it as the device's one pending push."""
        now = self.clock()
        if device.online:
            delivery = Delivery(push, delivered_at=now, stored=False, late=False)
            device._hand_over(delivery)
            return delivery
        if push.expiration == 0 or push.is_expired(now):
            device.dropped.append(Drop(push, DropCause.NOT_STORED, now))
            return None
        if device.pending is not None:
            device.dropped.append(Drop(device.pending, DropCause.DISPLACED, now))
        device.pending = push
        return None

    def bring_online(self, device: Device) -> Delivery | None:
        device.online = True
        push, device.pending = device.pending, None
        if push is None:
            return None
        now = self.clock()
        late = push.is_expired(now)
        if late and not self._late_delivery(device):
            device.dropped.append(Drop(push, DropCause.EXPIRED, now))
            return None
        delivery = Delivery(push, delivered_at=now, stored=True, late=late)
        device._hand_over(delivery)
        return delivery

    def purge_expired(self) -> list[Drop]:
        """Drop stored pushes whose expiration has passed (APNs discards them on its own)."""
        now = self.clock()
        drops: list[Drop] = []
        for device in self._devices.values():
            if device.pending is not None and device.pending.is_expired(now):
                drop = Drop(device.pending, DropCause.EXPIRED, now)
                device.dropped.append(drop)
                device.pending = None
                drops.append(drop)
        return drops
