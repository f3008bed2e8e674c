"""A device's registration as the service keeps it, and the one rule for updating it,
whether the device registered over HTTP (`PUT /v1/devices/{id}`) or a SIP phone's
REGISTER carried RFC 8599 push parameters (voip/sipcalls/registrar.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ApnsEnvironment = Literal["sandbox", "production"]
Platform = Literal["ios", "android"]
"""Which push service reaches the device: APNs (PushKit) or Firebase Cloud Messaging."""


@dataclass(frozen=True, slots=True)
class SipRegistration:
    """The REGISTER binding behind a push-capable SIP phone."""

    contact: str
    expires_at: int  # ms
    team_id: str


@dataclass(frozen=True, slots=True)
class Registration:
    """What a device says about itself when it registers."""

    voip_token: str | None
    apns_environment: ApnsEnvironment
    bundle_id: str | None
    alert_token: str | None = None
    sip: SipRegistration | None = None
    platform: Platform = "ios"
    fcm_token: str | None = None
    """Android: the FCM registration token, kept as the app gave it (it is case-sensitive)."""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    voip_token: str | None
    apns_environment: ApnsEnvironment
    bundle_id: str | None
    alert_token: str | None
    registered_at: int  # ms, first registration of this device id
    updated_at: int  # ms, last registration
    # When this token value was first given to us: a 410 from APNs only removes a token
    # registered before APNs's timestamp.
    token_registered_at: int
    sip: SipRegistration | None = None
    token_dropped_at: int | None = None  # set by voip/lua/drop_voip_token.lua
    platform: Platform = "ios"  # records from before Android have none: iOS
    fcm_token: str | None = None

    @classmethod
    def from_stored(cls, raw: Mapping[str, Any]) -> DeviceRecord:
        sip = raw.get("sip")
        return cls(
            voip_token=raw.get("voip_token"),
            apns_environment=raw["apns_environment"],
            bundle_id=raw.get("bundle_id"),
            alert_token=raw.get("alert_token"),
            registered_at=raw["registered_at"],
            updated_at=raw["updated_at"],
            token_registered_at=raw["token_registered_at"],
            sip=SipRegistration(sip["contact"], sip["expires_at"], sip["team_id"]) if sip else None,
            token_dropped_at=raw.get("token_dropped_at"),
            platform=raw.get("platform", "ios"),
            fcm_token=raw.get("fcm_token"),
        )

    def stored(self) -> dict[str, Any]:
        """The JSON object kept in Redis and shown by `GET /v1/devices`, keys in this order
        (an Android record adds `platform` and `fcm_token`)."""
        record: dict[str, Any] = {
            "voip_token": self.voip_token,
            "apns_environment": self.apns_environment,
            "bundle_id": self.bundle_id,
            "alert_token": self.alert_token,
            "registered_at": self.registered_at,
            "updated_at": self.updated_at,
            "token_registered_at": self.token_registered_at,
        }
        if self.platform == "android":
            # iOS records stay as they were before Android: no platform means iOS.
            record["platform"] = self.platform
            record["fcm_token"] = self.fcm_token
        if self.sip is not None:
            record["sip"] = {
                "contact": self.sip.contact,
                "expires_at": self.sip.expires_at,
                "team_id": self.sip.team_id,
            }
        if self.token_dropped_at is not None:
            record["token_dropped_at"] = self.token_dropped_at
        return record


def register(previous: DeviceRecord | None, update: Registration, now: int) -> DeviceRecord:
    """The record after `update`: APNs tokens lower-case (FCM's are case-sensitive), the
    first registration kept, and the token's registration time moved only when the token
    value changed (the same rule for both platforms' token drops)."""
    voip_token = update.voip_token.lower() if update.voip_token else None
    kept = (
        previous is not None
        and previous.platform == update.platform
        and previous.voip_token == voip_token
        and previous.fcm_token == update.fcm_token
    )
    return DeviceRecord(
        voip_token=voip_token,
        apns_environment=update.apns_environment,
        bundle_id=update.bundle_id,
        alert_token=update.alert_token.lower() if update.alert_token else None,
        registered_at=previous.registered_at if previous else now,
        updated_at=now,
        token_registered_at=previous.token_registered_at if previous and kept else now,
        sip=update.sip,
        platform=update.platform,
        fcm_token=update.fcm_token,
    )
