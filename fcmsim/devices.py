"""Simulated Android phones: an online phone gets a message at once; for an offline one
FCM stores it until its ttl runs out, one per collapse key (a newer message with the same
key displaces the stored one), at most four collapse keys at a time, and hands the
stored ones over when the phone comes back."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from fcmsim.validation import Message

MAX_COLLAPSE_KEYS = 4
MAX_STORED_PLAIN = 100


class DropCause(StrEnum):
    DISPLACED = "displaced"
    """A newer message with the same collapse key took its place."""
    EXPIRED = "expired"
    """Its ttl ran out while the phone was offline."""
    NOT_STORED = "not-stored"
    """ttl 0 to an offline phone: now or never."""
    OVERFLOW = "overflow"
    """A fifth collapse key (or the 101st plain message): the oldest goes."""


@dataclass(frozen=True)
class Stored:
    message: Message
    name: str
    received_at: float

    @property
    def expires_at(self) -> float:
        return self.received_at + self.message.ttl


@dataclass(frozen=True)
class Delivery:
    message: Message
    name: str
    received_at: float
    delivered_at: float
    stored: bool


@dataclass(frozen=True)
class Drop:
    message: Message
    name: str
    cause: DropCause


@dataclass
class Device:
    token: str
    online: bool = True
    registered: bool = True
    """False once the app is uninstalled: FCM answers 404 UNREGISTERED."""
    inbox: list[Delivery] = field(default_factory=list)
    collapsible: OrderedDict[str, Stored] = field(default_factory=OrderedDict)
    plain: list[Stored] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)

    @property
    def pending(self) -> list[Stored]:
        return [*self.collapsible.values(), *self.plain]


class DeviceRegistry:
    def __init__(self, clock: Callable[[], float], *, on_delivery: Callable[[Device, Delivery], None]) -> None:
        self.clock = clock
        self.on_delivery = on_delivery
        self._devices: dict[str, Device] = {}

    def add(self, token: str, *, online: bool = True) -> Device:
        device = Device(token, online=online)
        self._devices[token] = device
        return device

    def get(self, token: str) -> Device | None:
        return self._devices.get(token)

    def all(self) -> list[Device]:
        return list(self._devices.values())

    def accept(self, device: Device, message: Message, name: str) -> None:
        now = self.clock()
        if device.online:
            self._deliver(device, Delivery(message, name, now, now, stored=False))
            return
        stored = Stored(message, name, now)
        if message.ttl <= 0:
            device.dropped.append(Drop(message, name, DropCause.NOT_STORED))
        elif message.collapse_key is not None:
            previous = device.collapsible.pop(message.collapse_key, None)
            if previous is not None:
                device.dropped.append(Drop(previous.message, previous.name, DropCause.DISPLACED))
            device.collapsible[message.collapse_key] = stored
            while len(device.collapsible) > MAX_COLLAPSE_KEYS:
                _, oldest = device.collapsible.popitem(last=False)
                device.dropped.append(Drop(oldest.message, oldest.name, DropCause.OVERFLOW))
        else:
            device.plain.append(stored)
            if len(device.plain) > MAX_STORED_PLAIN:
                oldest = device.plain.pop(0)
                device.dropped.append(Drop(oldest.message, oldest.name, DropCause.OVERFLOW))

    def set_online(self, device: Device, online: bool) -> list[Delivery]:
        """Bring a phone on- or offline; coming online hands over what FCM stored for it
        (oldest first), what expired meanwhile dropped."""
        device.online = online
        if not online:
            return []
        now = self.clock()
        delivered: list[Delivery] = []
        for stored in sorted(device.pending, key=lambda s: s.received_at):
            if stored.expires_at <= now:
                device.dropped.append(Drop(stored.message, stored.name, DropCause.EXPIRED))
                continue
            delivery = Delivery(stored.message, stored.name, stored.received_at, now, stored=True)
            self._deliver(device, delivery)
            delivered.append(delivery)
        device.collapsible.clear()
        device.plain.clear()
        return delivered

    def _deliver(self, device: Device, delivery: Delivery) -> None:
        device.inbox.append(delivery)
        self.on_delivery(device, delivery)
