"""One simulated Android phone running the calling app: FCM data messages, the status
check, a full-screen call notification (modelled by the same `ReportedCall`s as CallKit's
calls), the WebSocket; what docs/android-client.md says the real app must do.

Unlike PushKit, FCM binds the app to no "report a call for every push" rule: the app asks
`status_url` first and shows the call only on a live verdict, so a late invite never
rings at all. A stored message comes back as the newest one per call (FCM keeps one per
collapse key), so a phone that was offline wakes to the cancellation, not the invite.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from fcmsim import Delivery as FCMDelivery
from fcmsim import Device as FCMDevice
from voip.devicesim.phone import Phone


def payload_of(data: dict[str, str]) -> dict[str, Any]:
    """A data message's strings, read back into the invite's shape (`caller` is JSON,
    times are ms); a field that does not parse is left out, as an app would ignore it."""
    payload: dict[str, Any] = dict(data)
    for name in ("sent_at", "expires_at"):
        if name in data:
            payload[name] = int(data[name]) if data[name].isdigit() else 0
    if "caller" in data:
        try:
            caller = orjson.loads(data["caller"])
        except orjson.JSONDecodeError:
            caller = None
        payload["caller"] = caller if isinstance(caller, dict) else {}
    return payload


class AndroidPhone(Phone):
    platform = "android"
    unreported_why = "android: status_url is asked before the call is shown"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fcm_device: FCMDevice | None = None
        self._messages: asyncio.Queue[FCMDelivery] = asyncio.Queue()

    @property
    def token(self) -> str:
        assert self.fcm_device is not None, "install() first"
        return self.fcm_device.token

    def _fcm(self) -> Any:
        if self.backend.fcm is None:
            raise ValueError("this backend has no FCM simulator: Android phones need the node's bundled one")
        return self.backend.fcm

    async def install(self, *, online: bool = True) -> None:
        """Firebase hands the app a registration token; the app registers it."""
        fcm = self._fcm()
        self.fcm_device = fcm.add_device(online=online)
        fcm.delivery_listeners.append(self._delivered)
        self._spawn(self._receive_messages())
        await self.register()

    def _delivered(self, device: FCMDevice, delivery: FCMDelivery) -> None:
        if device is self.fcm_device:
            self._messages.put_nowait(delivery)

    async def register(self) -> dict[str, Any]:
        response = await self._http.put(
            f"{self.backend.base_url}/v1/devices/{self.device_id}",
            json={"platform": "android", "fcm_token": self.token},
            headers={"Authorization": f"Bearer {self.bearer()}"},
        )
        response.raise_for_status()
        online = self.fcm_device.online if self.fcm_device else None
        self._record("registered", token=f"…{self.token[-8:]}", platform="android", online=online)
        record: dict[str, Any] = response.json()
        return record

    async def sleep(self) -> None:
        """No network (or Doze): FCM holds messages for the phone, one per call."""
        await self.close_app()
        self._fcm().set_online(self.token, False)
        self._record("network.offline")

    async def wake(self) -> None:
        self._record("network.online")
        self._fcm().set_online(self.token, True)
        await asyncio.sleep(0)  # let the message loop take them

    def lose_network(self) -> None:
        self._fcm().set_online(self.token, False)
        self._deaf = True
        self._record("network.lost", socket="half-open")

    async def _receive_messages(self) -> None:
        while True:
            delivery = await self._messages.get()
            # FirebaseMessagingService.onMessageReceived: one message at a time.
            self._dispatch_push(payload_of(delivery.message.data), None, stored=delivery.stored, late=False)

    async def aclose(self) -> None:
        if self.backend.fcm is not None and self._delivered in self.backend.fcm.delivery_listeners:
            self.backend.fcm.delivery_listeners.remove(self._delivered)
        await super().aclose()
