"""What the operators' API answers, as pydantic models: the OpenAPI schema is generated
from them, and the contract tests check every response against it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from voip.calls import CallState


class OpsCall(BaseModel):
    call_id: str
    state: CallState
    caller_user: str
    caller_device: str
    caller_name: str | None = Field(description="As shown on the callee's CallKit screen")
    callee_user: str
    origin_node: str = Field(description="The node the call was placed on")
    answered_by_device: str | None
    ended_by: str | None = Field(description="caller, callee or system")
    created_at: int | None = Field(description="ms since the epoch, like every time here")
    ring_deadline: int | None
    answered_at: int | None
    ended_at: int | None
    first_ringing_at: int | None


class OpsCallPage(BaseModel):
    calls: list[OpsCall] = Field(description="Newest first")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null when the listing is complete. "
        "A page can hold fewer than `limit` calls and still have a cursor: a listing reads "
        "at most 2000 index entries per request."
    )


class TimelineEntry(BaseModel):
    """One step of a call. Kinds: created, state, ringing, delivered, status_check, push;
    more may come, so readers must accept kinds they do not know."""

    model_config = ConfigDict(extra="allow")
    at: int
    event: str
    node: str | None = None
    device: str | None = None


class OpsCallDetail(BaseModel):
    call: OpsCall
    timeline: list[TimelineEntry]


class OpsDevice(BaseModel):
    device_id: str
    platform: Literal["ios", "android"]
    apns_environment: str | None
    bundle_id: str | None
    voip_token_prefix: str | None = Field(description="First 8 hex digits of the VoIP token")
    has_alert_token: bool
    fcm_token_prefix: str | None = Field(description="Android: the first 8 characters of the FCM token")
    registered_at: int | None
    updated_at: int | None
    token_registered_at: int | None
    token_age_ms: int | None
    online: bool = Field(description="Holds a WebSocket to some node right now")
    connected_node: str | None
    last_push: dict[str, Any] | None = Field(description="The last push sent to it, if recorded")


class OpsDevices(BaseModel):
    user: str
    devices: list[OpsDevice]


class DelayBucket(BaseModel):
    label: str
    count: int


class DelayFigures(BaseModel):
    count: int
    p50: int | None
    p95: int | None
    max: int | None
    buckets: list[DelayBucket]


class LateCaught(BaseModel):
    status_checks: int
    calls: int


class RedisEpoch(BaseModel):
    id: str
    created_at: int


class RedisDataLoss(BaseModel):
    model_config = ConfigDict(extra="allow")
    previous_epoch: str
    previous_created_at: int
    last_seen_at: int = Field(description="ms: a node last found the data there")
    noticed_at: int = Field(description="ms: a node found it gone")
    noticed_by: str


class RedisState(BaseModel):
    epoch: RedisEpoch | None
    data_lost: RedisDataLoss | None = Field(
        description="The last time Redis came back without this deployment's data, from any node"
    )
    data_lost_noticed_here: int = Field(description="Losses this node noticed since it started")
    durability_warnings: list[str] = Field(description="What in Redis's settings could lose data")


class WebhookFailure(BaseModel):
    url: str = Field(description="Scheme, host and path: no query, no credentials")
    url_key: str = Field(description="The URL's hash: the `url` label of voip_webhook_failing")
    error: str = Field(description="The last attempt's error: timeout, HTTP 503, ConnectError...")
    failing_since: int = Field(description="ms: the first failed attempt of the event it is stuck on")
    last_attempt: int = Field(description="ms")
    node: str = Field(description="The node that made the last attempt")


class WebhooksState(BaseModel):
    urls: int = Field(description="VOIP_WEBHOOK_URLS configured on this node (0: webhooks off here)")
    failing: list[WebhookFailure] = Field(description="URLs whose last delivery attempt failed, from any node")
    calls_filed: int = Field(description="Calls in the outbox's due index: events to send, or to look at again")
    calls_due: int = Field(description="Of those, due now: a growing number means deliveries are behind")


class OpsSummary(BaseModel):
    since: int
    until: int
    truncated: bool = Field(description="More calls were in the window than were counted")
    calls: int
    outcomes: dict[str, int] = Field(description="Calls by state")
    push_results: dict[str, int] = Field(description="Pushes by APNs reason ('accepted' for a 200)")
    push_to_status_ms: DelayFigures = Field(description="From a push to the status check it caused")
    late_pushes_caught: LateCaught = Field(
        description="Status checks that answered a push (made with its capability) and found its call"
        " already ended: late pushes whose ghost call the verdict ended. Bearer checks are not counted"
    )
    redis: RedisState = Field(description="Redis durability and the deployment epoch (docs/deploy.md)")
    webhooks: WebhooksState = Field(description="Call-event webhooks: failing URLs and the outbox (docs/webhooks.md)")


class SimulatorPush(BaseModel):
    index: int = Field(description="Order of arrival at the simulator")
    received_at: int = Field(description="ms")
    apns_id: str
    device_token_prefix: str | None = Field(description="First 8 hex digits of the device token")
    headers: dict[str, str] = Field(description="apns-topic, -push-type, -priority, -expiration, -collapse-id")
    payload: Any = Field(description="The push's JSON body: for an invite, call_id, expires_at and status_url")
    status: int | None = Field(description="The simulator's answer (200: accepted), null before it answered")
    reason: str | None = Field(description="APNs reason of a refusal")
    delivery: Literal["delivered", "stored", "dropped", "refused", "unanswered", "unknown"] = Field(
        description="What became of it: handed to the simulated phone (online), stored for an offline"
        " one (APNs keeps one per device), dropped (displaced, expired), or refused"
    )
    stored: bool | None = Field(None, description="Delivered: handed over when the phone came online")
    late: bool | None = Field(None, description="Delivered after its apns-expiration (an injected fault)")
    cause: str | None = Field(None, description="Dropped: displaced, expired or not-stored")


class OpsSimulatorPushes(BaseModel):
    simulator: bool = Field(description="True when pushes go to the bundled simulator (no APNs credentials)")
    note: str
    endpoint: str | None = Field(None, description="The simulator's address")
    received: int = Field(description="Pushes the simulator received since the node started")
    pushes: list[SimulatorPush] = Field(description="The newest first")


class SimulatorFCMMessage(BaseModel):
    index: int = Field(description="Order of arrival at the simulator")
    received_at: int = Field(description="ms")
    name: str | None = Field(description="The message's name once accepted (projects/<p>/messages/<id>)")
    device_token_prefix: str | None = Field(description="First 8 characters of the FCM token")
    android: dict[str, Any] = Field(description="android: priority, ttl, collapse_key")
    data: dict[str, Any] = Field(description="The data message: for an invite, call_id, expires_at and status_url")
    status: int | None = Field(description="The simulator's answer (200: accepted), null before it answered")
    error: str | None = Field(description="FCM error code of a refusal (UNREGISTERED, INVALID_ARGUMENT, ...)")
    delivery: Literal["delivered", "stored", "dropped", "refused", "unanswered", "unknown"] = Field(
        description="What became of it: handed to the simulated phone (online), stored for an offline"
        " one (one per collapse key), dropped (displaced, expired, not stored), or refused"
    )
    stored: bool | None = Field(None, description="Delivered: handed over when the phone came online")
    cause: str | None = Field(None, description="Dropped: displaced, expired, not-stored or overflow")


class OpsSimulatorFCM(BaseModel):
    simulator: bool = Field(description="True when Android pushes go to the bundled FCM simulator")
    note: str
    endpoint: str | None = Field(None, description="The simulator's address")
    received: int = Field(description="Messages the simulator received since the node started")
    messages: list[SimulatorFCMMessage] = Field(description="The newest first")
