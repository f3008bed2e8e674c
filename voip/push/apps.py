"""Several iOS apps behind one `Notifier`, the way sygnal serves them: each app (bundle
id) has its own APNs key, hence its own `APNsNotifier` (its provider tokens and its
connections), and each device's pushes go to the notifier of the bundle it registered.

The address of every push names its bundle, so a cancellation goes where its invite went,
signed with the same key, even if the device registers another bundle meanwhile. Without
credentials (the bundled simulator) one notifier serves every bundle: the simulator's key
may push to any topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import structlog

from voip.log_throttle import RepeatedLog
from voip.push.apns import APNsNotifier
from voip.push.interface import Environment, Outcome, Push, PushKind, PushResult, PushType

log = structlog.get_logger(__name__)

APP_NOT_CONFIGURED = "AppNotConfigured"


class APNsApps:
    def __init__(
        self,
        notifiers: Mapping[str, APNsNotifier],
        *,
        default: str | None,
        any_app: APNsNotifier | None = None,
    ) -> None:
        """`notifiers`: bundle id -> its app's notifier. `default`: the bundle of a device
        that registered none. `any_app`: serves every bundle not in `notifiers` (the
        bundled simulator's)."""
        if default is not None and default not in notifiers and any_app is None:
            raise ValueError(f"the default app {default} has no notifier")
        self.notifiers = dict(notifiers)
        self.default = default
        self.any_app = any_app
        # Devices of an app that left the settings: once per interval, with a count.
        self._not_configured = RepeatedLog(log, "apns.app_not_configured")

    @property
    def configured(self) -> list[str]:
        """The bundle ids with credentials of their own, sorted."""
        return sorted(self.notifiers)

    def serves(self, bundle_id: str | None) -> bool:
        """Whether pushes to a device that registered `bundle_id` can be sent."""
        return self._notifier(bundle_id) is not None

    def _bundle(self, bundle_id: str | None) -> str | None:
        return bundle_id or self.default

    def _notifier(self, bundle_id: str | None) -> APNsNotifier | None:
        bundle = self._bundle(bundle_id)
        if bundle is None:
            return None
        return self.notifiers.get(bundle) or self.any_app

    def address(self, device: dict[str, Any], kind: PushKind) -> dict[str, Any] | None:
        bundle = self._bundle(device.get("bundle_id"))
        notifier = self._notifier(bundle)
        if notifier is None:
            # Registered before its app left the settings (PUT /v1/devices refuses it now).
            self._not_configured.failed(bundle_id=bundle, kind=kind.value)
            return None
        address = notifier.address(device, kind)
        if address is not None:
            address["bundle_id"] = bundle
        return address

    async def notify(self, push: Push) -> PushResult:
        bundle = self._bundle(push.address.get("bundle_id"))
        notifier = self._notifier(bundle)
        if notifier is None:
            # A call pushed by a node that served this app, ended on one that does not.
            return PushResult(
                apns_id="",
                device_token=push.address.get("token", ""),
                environment=Environment(push.address.get("environment", "production")),
                push_type=PushType.ALERT if push.kind is PushKind.MISSED_ALERT else PushType.VOIP,
                outcome=Outcome.REJECTED,
                status=None,
                reason=APP_NOT_CONFIGURED,
                timestamp=None,
                latency_ms=0.0,
                attempts=0,
                likely_cause=f"this node has no APNs credentials for the app {bundle}",
                app=bundle or "",
            )
        if push.address.get("bundle_id") != bundle:
            # Stored before addresses named their bundle: the default app's, as then.
            push = replace(push, address={**push.address, "bundle_id": bundle})
        return await notifier.notify(push)

    def _all(self) -> list[APNsNotifier]:
        notifiers = list(self.notifiers.values())
        if self.any_app is not None and self.any_app not in notifiers:
            notifiers.append(self.any_app)
        return notifiers

    async def connect(self) -> None:
        """Readiness: a warm connection to APNs in each environment, for every app."""
        for notifier in self._all():
            await notifier.connect()

    async def aclose(self) -> None:
        for notifier in self._all():
            await notifier.aclose()
