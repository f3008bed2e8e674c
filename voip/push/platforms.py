"""One `Notifier` over several platforms: a device's record says its platform
(`"ios"` when it says nothing, as records did before Android), and each push goes to
the notifier of the platform its address names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voip.push.interface import Environment, Notifier, Outcome, Push, PushKind, PushResult, PushType

DEFAULT_PLATFORM = "ios"


class PlatformNotifiers:
    def __init__(self, notifiers: Mapping[str, Notifier]) -> None:
        if DEFAULT_PLATFORM not in notifiers:
            raise ValueError("an iOS notifier is required: device records without a platform are iOS")
        self.notifiers = dict(notifiers)

    def address(self, device: dict[str, Any], kind: PushKind) -> dict[str, Any] | None:
        notifier = self.notifiers.get(device.get("platform", DEFAULT_PLATFORM))
        return None if notifier is None else notifier.address(device, kind)

    async def notify(self, push: Push) -> PushResult:
        # iOS addresses name no platform: the calls stored before Android name none either.
        platform = push.address.get("platform", DEFAULT_PLATFORM)
        notifier = self.notifiers.get(platform)
        if notifier is None:
            # A call pushed by a node that had this platform, ended on one that has not.
            return PushResult(
                apns_id="",
                device_token=push.address.get("token", ""),
                environment=Environment.PRODUCTION,
                push_type=PushType.VOIP,
                outcome=Outcome.REJECTED,
                status=None,
                reason="PlatformNotConfigured",
                timestamp=None,
                latency_ms=0.0,
                attempts=0,
                likely_cause=f"this node has no {platform} credentials",
                platform=platform,
            )
        return await notifier.notify(push)

    async def aclose(self) -> None:
        for notifier in self.notifiers.values():
            await notifier.aclose()
