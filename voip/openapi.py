"""`GET /openapi.json`: the HTTP API's contract. Bodies come from the pydantic models
(the API's own `DeviceIn`, the response models below and in voip/ops/models.py); paths,
parameters, status codes and security are written out here, next to each other, so that
a change to a route has one obvious place to be described. tests/ops checks the running
service against it with schemathesis."""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from voip.api import DeviceIn, JSONResponse
from voip.calls import CallState, EndReason
from voip.history import DEFAULT_LIMIT, MAX_LIMIT
from voip.history_api import AvailabilityIn, SeenIn
from voip.ops import models as ops

DEVICE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
REF = "#/components/schemas/{model}"


class FieldError(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    error: str = Field(description="A stable code: unauthorized, forbidden, validation_error, ...")
    message: str
    detail: list[FieldError] | None = None
    retry_after: int | None = Field(None, description="With 503 `unavailable`: seconds to wait, as in `Retry-After`")
    bundle_id: str | None = Field(
        None, description="With 422 `unknown_app`: the bundle id refused (null: none given, and several apps served)"
    )


class Device(BaseModel):
    device_id: str
    platform: Literal["ios", "android"] = Field(
        "ios", description='Which push service reaches it: APNs or FCM; absent on iOS devices (then "ios")'
    )
    voip_token: str | None
    apns_environment: Literal["sandbox", "production"]
    bundle_id: str | None
    alert_token: str | None
    registered_at: int
    updated_at: int
    token_registered_at: int
    fcm_token: str | None = Field(
        None, description="Android only: the FCM registration token (null once FCM refused it)"
    )


class DeviceSaved(Device):
    dropped_devices: list[str] = Field(description="Devices removed to stay within the per-user limit (oldest first)")


class DeviceList(BaseModel):
    devices: list[Device]


class CallStatus(BaseModel):
    call_id: str
    state: CallState
    end_call: bool = Field(description="End the CallKit call now (reportCall(with:endedAt:reason:))")
    reason: EndReason | None
    server_time: int
    answered_by_device: str | None = None
    ended_at: int | None = None


class UnknownCall(BaseModel):
    call_id: str
    end_call: Literal[True]
    reason: Literal["unknown_call"]
    server_time: int


class IceServer(BaseModel):
    """One RTCIceServer (W3C WebRTC): pass it to the peer connection as it is."""

    urls: list[str] = Field(description="stun:, stuns:, turn: or turns: URIs (RFC 7064, RFC 7065)")
    username: str | None = Field(
        None, description="TURN only: `<expiry, unix seconds>:<user id>` (coturn's REST-API credentials)"
    )
    credential: str | None = Field(
        None, description="TURN only: base64 HMAC-SHA1 of `username` under the TURN server's shared secret"
    )


class IceServers(BaseModel):
    ice_servers: list[IceServer] = Field(
        description="STUN URIs in one entry without credentials, TURN URIs in another with them; "
        "empty when the deployment runs neither (ICE then uses host candidates only)"
    )
    ttl: int = Field(description="Seconds the TURN credential stays valid (TURN_TTL): ask again before then")


class HistoryCall(BaseModel):
    call_id: str
    direction: Literal["outgoing", "incoming"]
    peer: str = Field(description="The other party: a user id, or a SIP address")
    state: CallState
    reason: str | None = Field(
        description="Null while ringing or answered; once final, the reason words of the status endpoint in "
        "this user's words (`remote_ended`, `unanswered`, `declined_elsewhere`, `failed`), or `dnd` / `busy` "
        "for a call the callee's availability turned away"
    )
    started_at: int
    answered_at: int | None
    ended_at: int | None
    duration_ms: int | None = Field(description="Answered to ended; 0 for a final call never answered; null while live")
    answered_by_device: str | None = Field(description="The callee's device that answered")


class HistoryPage(BaseModel):
    calls: list[HistoryCall] = Field(description="Newest first (start time, then call id)")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null when there is no more. Calls made meanwhile "
        "never move a cursor: no call repeats, none is skipped"
    )
    missed_unseen: int = Field(
        description="Incoming calls nobody answered (state `missed` or `cancelled`) started after the "
        "user's seen mark (`POST /v1/calls/seen`), among the newest 200 after it"
    )


class SeenMark(BaseModel):
    up_to: int = Field(description="The user's seen mark now (never moves back; never past the server's now)")
    missed_unseen: int


class AvailabilityOut(BaseModel):
    dnd: bool = Field(description="Do-not-disturb in force now (false once `until` has passed)")
    until: int | None = Field(description="When do-not-disturb ends by itself (ms); null: when turned off")
    when_busy: Literal["ring", "reject"] = Field(
        description="`reject`: a call to a user in an answered call is turned away (`busy`, SIP 486)"
    )


class OpsLiveTicket(BaseModel):
    ticket: str = Field(description="Opens /v1/ops/live once: `?ticket=<ticket>`")
    expires_in: int = Field(description="Seconds it stays usable (VOIP_OPS_TICKET_TTL)")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description="Each check: 'ok', or why it failed")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="Shown, never counted in `status`: `redis` is how Redis keeps data "
        "(appendonly, appendfsync, save, maxmemory_policy, maxmemory, replicas: 'unknown' when "
        "Redis will not say) and `warnings`, what could lose calls and devices",
    )


MODELS: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
    (DeviceIn, "validation"),
    (SeenIn, "validation"),
    (AvailabilityIn, "validation"),
    *(
        (model, "serialization")
        for model in (
            Error,
            Device,
            DeviceSaved,
            DeviceList,
            IceServers,
            CallStatus,
            UnknownCall,
            HistoryPage,
            SeenMark,
            AvailabilityOut,
            Health,
            Readiness,
            ops.OpsCallPage,
            ops.OpsCallDetail,
            ops.OpsDevices,
            ops.OpsSummary,
            OpsLiveTicket,
            ops.OpsSimulatorPushes,
            ops.OpsSimulatorFCM,
        )
    ),
]

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]  # the role each operation wants is in its 403


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


UNAUTHORIZED = _error("No bearer token, or one that is malformed, forged or expired")
FORBIDDEN_DEVICE = _error("A valid token without the device role")
FORBIDDEN_OPERATOR = _error("A valid token without the operator role")
INVALID = _error("A parameter or the body is invalid; `detail` names the fields")
# Every route that reads Redis (docs/operators.md#when-redis-is-busy-or-down).
UNAVAILABLE = {
    **_error("`unavailable`: Redis is unavailable or busy; retry after `retry_after` seconds"),
    "headers": {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}},
}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
        **extra,
    }


DEVICE_ID = _param(
    "device_id",
    "path",
    {"type": "string", "pattern": DEVICE_ID_PATTERN},
    "The app's own id for this install (e.g. identifierForVendor)",
)
CALL_ID = _param(
    "call_id",
    "path",
    {"type": "string", "maxLength": 64},
    "The call id the push carried (a UUID, any case; anything else is an unknown call)",
)
TIME = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
WINDOW = [
    _param("since", "query", TIME, "Calls created at or after this time (ms since the epoch)"),
    _param("until", "query", TIME, "Calls created at or before this time (ms since the epoch)"),
]


def _paths() -> dict[str, Any]:
    return {
        "/v1/devices": {
            "get": {
                "tags": ["devices"],
                "operationId": "listDevices",
                "summary": "The caller's devices",
                "security": BEARER,
                "responses": {
                    "200": _json("DeviceList", "The devices of the token's user"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/v1/devices/{device_id}": {
            "parameters": [DEVICE_ID],
            "put": {
                "tags": ["devices"],
                "operationId": "putDevice",
                "summary": "Register or update a device",
                "description": "Registers the install's PushKit VoIP token (and optionally its "
                "alert token). Registering a new token value resets the token's age.",
                "security": BEARER,
                # An empty body is taken as {} (a device with no token yet).
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model="DeviceIn")}}},
                },
                "responses": {
                    "200": _json("DeviceSaved", "Updated"),
                    "201": _json("DeviceSaved", "Registered"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "413": _error("Body over 16 KiB"),
                    "422": _error(
                        "`validation_error`: the body is invalid, `detail` names the fields. `unknown_app`: "
                        "an iOS device whose `bundle_id` is not an app this service has APNs credentials for "
                        "(APNS_APPS, APNS_BUNDLE_ID), or none given when it serves several; without credentials "
                        "(the bundled simulator) every bundle is served"
                    ),
                    "503": UNAVAILABLE,
                },
            },
            "delete": {
                "tags": ["devices"],
                "operationId": "deleteDevice",
                "summary": "Forget a device",
                "security": BEARER,
                "responses": {
                    "204": {"description": "Forgotten"},
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "404": _error("The user has no such device"),
                    "422": INVALID,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/v1/ice-servers": {
            "get": {
                "tags": ["devices"],
                "operationId": "iceServers",
                "summary": "STUN and TURN servers for this user's media, with a fresh TURN credential",
                "description": "Pass `ice_servers` to the peer connection as its `iceServers`. The TURN "
                "credential expires `ttl` seconds after this answer: fetch the list before each "
                "call (or when less than a call's length is left) and never store it. Touches no "
                "Redis. Cache-Control: no-store.",
                "security": BEARER,
                "responses": {
                    "200": _json("IceServers", "The ICE servers"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                },
            }
        },
        "/v1/calls/{call_id}/status": {
            "get": {
                "tags": ["calls"],
                "operationId": "callStatus",
                "summary": "What a woken app should do with the call a VoIP push announced",
                "description": "Report the push's call to CallKit first, then ask this: PushKit's handler "
                "must report the call before it returns, with nothing (no request) before "
                "the report. Then ask on every invite push: `end_call: true` means end that "
                "CallKit call at once with `reason`. No answer or a 503 is no verdict: keep "
                "the call, ask again with backoff, and end it as unanswered at the push's "
                "`expires_at`. Authorised either by a "
                "participant device's bearer token or by the push's `cap` capability "
                "together with `device_id`.",
                "parameters": [
                    CALL_ID,
                    _param(
                        "device_id",
                        "query",
                        {"type": "string", "pattern": DEVICE_ID_PATTERN},
                        "The asking device; required with `cap`. With a bearer token, one of the "
                        "user's devices in this call (the caller's: the one that placed it); "
                        "without it the verdict is the user's, and never ends a call that is "
                        "live for them",
                    ),
                ],
                "security": [{"bearer": []}, {"capability": []}],
                "responses": {
                    "200": _json("CallStatus", "The call's state and the verdict for this device"),
                    "401": _error("Neither a valid bearer token nor a valid capability"),
                    "403": _error(
                        "A valid token without the device role, or a `device_id` that is "
                        "not one of the user's devices in this call"
                    ),
                    "404": _json("UnknownCall", "Unknown call, not this user's call, or past retention: end it"),
                    "422": INVALID,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/v1/calls": {
            "get": {
                "tags": ["calls"],
                "operationId": "listCalls",
                "summary": "The user's calls, placed and received, newest first (Recents)",
                "description": "Each call as this user sees it, kept `VOIP_HISTORY_RETENTION` seconds "
                "(30 days) from its last change, and the count of missed calls not yet seen.",
                "security": BEARER,
                "parameters": [
                    _param(
                        "cursor",
                        "query",
                        {"type": "string", "pattern": "^[0-9]{1,16}:[0-9a-f-]{36}$"},
                        "`next_cursor` of the previous page",
                    ),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                        "Calls per page",
                    ),
                ],
                "responses": {
                    "200": _json("HistoryPage", "A page of the user's calls"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "422": INVALID,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/v1/calls/seen": {
            "post": {
                "tags": ["calls"],
                "operationId": "markCallsSeen",
                "summary": "Mark the missed calls started up to a time as seen, on every device",
                "description": "The user's other connected devices get a `calls.seen` frame with the "
                "new mark and `missed_unseen`. The mark never moves back, and never past the server's now.",
                "security": BEARER,
                "parameters": [
                    _param(
                        "device_id",
                        "query",
                        {"type": "string", "pattern": DEVICE_ID_PATTERN},
                        "The asking device: it gets no `calls.seen` frame",
                    )
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model="SeenIn")}}},
                },
                "responses": {
                    "200": _json("SeenMark", "The mark now"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "413": _error("Body over 16 KiB"),
                    "422": INVALID,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/v1/me/availability": {
            "get": {
                "tags": ["calls"],
                "operationId": "getAvailability",
                "summary": "The user's do-not-disturb and busy rule",
                "security": BEARER,
                "responses": {
                    "200": _json("AvailabilityOut", "As it stands now"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "503": UNAVAILABLE,
                },
            },
            "put": {
                "tags": ["calls"],
                "operationId": "putAvailability",
                "summary": "Set do-not-disturb and the busy rule",
                "description": "Under do-not-disturb no device rings and no push is sent: the caller "
                'gets `call.declined` with `reason: "dnd"` (SIP 480). With `when_busy: "reject"` '
                'and an answered call in progress, `reason: "busy"` (SIP 486). Both are missed calls '
                "in both parties' histories.",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model="AvailabilityIn")}}},
                },
                "responses": {
                    "200": _json("AvailabilityOut", "Saved; as it stands now"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_DEVICE,
                    "413": _error("Body over 16 KiB"),
                    "422": INVALID,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/v1/ops/calls": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsListCalls",
                "summary": "Calls, newest first",
                "security": BEARER,
                "parameters": [
                    _param(
                        "state",
                        "query",
                        {"type": "array", "items": {"type": "string", "enum": [s.value for s in CallState]}},
                        "Only calls in one of these states (repeat the parameter)",
                        style="form",
                        explode=True,
                    ),
                    _param(
                        "user",
                        "query",
                        {"type": "string", "minLength": 1, "maxLength": 128},
                        "Only calls this user placed or received",
                    ),
                    *WINDOW,
                    _param(
                        "cursor",
                        "query",
                        {"type": "string", "pattern": "^[0-9]{1,16}:.{1,64}$"},
                        "`next_cursor` of the previous page",
                    ),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                        "Calls per page",
                    ),
                ],
                "responses": {
                    "200": _json("OpsCallPage", "A page of calls"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                    "422": INVALID,
                },
            }
        },
        "/v1/ops/calls/{call_id}": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsGetCall",
                "summary": "A call and its whole timeline",
                "security": BEARER,
                "parameters": [_param("call_id", "path", {"type": "string", "format": "uuid"}, "The call's id")],
                "responses": {
                    "200": _json("OpsCallDetail", "The call and every entry of its timeline"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                    "404": _error("No such call, or past its retention"),
                    "422": INVALID,
                },
            }
        },
        "/v1/ops/devices/{user}": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsUserDevices",
                "summary": "A user's devices: tokens' age, presence, last push result",
                "security": BEARER,
                "parameters": [
                    _param(
                        "user",
                        "path",
                        {"type": "string", "minLength": 1, "maxLength": 128},
                        "The user id (a token's `sub`)",
                    )
                ],
                "responses": {
                    "200": _json("OpsDevices", "The user's devices (none for an unknown user)"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                    "422": INVALID,
                },
            }
        },
        "/v1/ops/summary": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsSummary",
                "summary": "Counters over a time window (default: the last hour)",
                "security": BEARER,
                "parameters": WINDOW,
                "responses": {
                    "200": _json("OpsSummary", "Counters over the newest 500 calls of the window"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                    "422": INVALID,
                },
            }
        },
        "/v1/ops/simulator/pushes": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsSimulatorPushes",
                "summary": "What the bundled APNs simulator received (a node with no APNs credentials)",
                "description": "With no APNs credentials the node pushes to its embedded simulator and no "
                "real phone receives anything. Each push: its headers, payload (an invite's "
                "`status_url` included), the simulator's answer and what became of it. With "
                "credentials: `simulator: false` and no pushes.",
                "security": BEARER,
                "parameters": [
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 200},
                        "Newest pushes to return (default 50)",
                    )
                ],
                "responses": {
                    "200": _json("OpsSimulatorPushes", "The simulator's pushes, newest first"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                    "422": INVALID,
                },
            }
        },
        "/v1/ops/simulator/fcm": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsSimulatorFCM",
                "summary": "What the bundled FCM simulator received (a node with no FCM credentials)",
                "description": "With no FCM credentials (outside production) the node sends Android pushes to "
                "its embedded FCM simulator and no real phone receives anything. Each message: its "
                "android options, data (an invite's `status_url` included), the simulator's answer and "
                "what became of it. Otherwise: `simulator: false` and no messages.",
                "security": BEARER,
                "parameters": [
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 200},
                        "Newest messages to return (default 50)",
                    )
                ],
                "responses": {
                    "200": _json("OpsSimulatorFCM", "The simulator's messages, newest first"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                    "422": INVALID,
                },
            }
        },
        "/v1/ops/live/ticket": {
            "post": {
                "tags": ["ops"],
                "operationId": "opsLiveTicket",
                "summary": "A one-use, short-lived ticket that opens the live feed (for browsers)",
                "description": "Browsers cannot set headers on a WebSocket, and a token in a URL ends "
                "up in logs. The ticket is bound to the operator, opens "
                "`/v1/ops/live?ticket=...` once, and expires after `expires_in` seconds.",
                "security": BEARER,
                "responses": {
                    "200": _json("OpsLiveTicket", "The ticket"),
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["health"],
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": BEARER,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN_OPERATOR,
                },
            }
        },
        "/": {
            "get": {
                "tags": ["health"],
                "operationId": "index",
                "security": [],
                "summary": "An index of the routes, with the credential each wants (links only, no data)",
                "responses": {
                    "200": {
                        "description": "`service`, `about`, `links` (name -> `href`, `auth`), `tokens`",
                        "content": {
                            "application/json": {"schema": {"type": "object", "required": ["service", "links"]}}
                        },
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "tags": ["health"],
                "operationId": "healthz",
                "security": [],
                "summary": "Liveness: the process serves requests (touches no dependency)",
                "responses": {"200": _json("Health", "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["health"],
                "operationId": "readyz",
                "security": [],
                "summary": "Readiness: Redis answers, and every registered readiness check passes",
                "responses": {
                    "200": _json("Readiness", "Ready for traffic"),
                    "503": _json("Readiness", "Not ready; `checks` says what failed"),
                },
            }
        },
        "/ops": {
            "get": {
                "tags": ["ops"],
                "operationId": "opsPage",
                "security": [],
                "summary": "The operators' web page (static; it asks for a token itself)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["health"],
                "operationId": "openapi",
                "security": [],
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


WEBSOCKETS = {
    "/v1/ws": {
        "summary": "A device's signalling socket (calls over WebSocket)",
        "auth": "device bearer token: Authorization header or access_token query; device_id query",
        "refusals": {
            "400": "device_id missing or malformed",
            "401": "no or invalid token",
            "403": "not a device token",
        },
        "closes": {"1013": "Redis is unavailable: reconnect with backoff"},
    },
    "/v1/sip": {
        "summary": "SIP over WebSocket (RFC 7118) for browser softphones: one SIP message per "
        "frame, Via transport WS or WSS, served by the node's SIP stack (SIP_ENABLED)",
        "auth": "none on the socket: every REGISTER and INVITE answers a SIP digest challenge",
        "subprotocol": "sip",
        "refusals": {
            "400": "the subprotocol is not sip",
            "404": "SIP is not enabled on this node",
            "503": "the node drains, or holds SIP_WS_MAX_CONNECTIONS SIP sockets already",
        },
        "closes": {
            "1008": "not a SIP message, too many messages, or too slow to read",
            "1009": "a frame over VOIP_WS_MAX_FRAME_BYTES",
            "1012": "the node drains: reconnect (to another node) and register again",
        },
    },
    "/v1/ops/live": {
        "summary": "Every timeline entry of every call, from every node, as it happens",
        "auth": "operator bearer token in the Authorization header, or ticket query (one use, "
        "from POST /v1/ops/live/ticket); access_token query still accepted",
        "frames": {
            "hello": {"type": "hello", "node": "node id", "server_time": "ms"},
            "entry": {"type": "entry", "call_id": "uuid", "entry": "TimelineEntry"},
        },
        "refusals": {
            "401": "no or invalid token, or a used or expired ticket",
            "403": "not an operator token",
            "503": "the feed is off or Redis is unavailable",
        },
        "closes": {"1013": "the operator fell behind: reconnect and reload"},
    },
}


@cache
def document() -> dict[str, Any]:
    _, schemas = models_json_schema(MODELS, ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VoIP call signalling",
            "version": "1",
            "description": "Call signalling for iOS calling apps. Times are ms since the "
            "Unix epoch. WebSocket endpoints are described under `x-websockets`.",
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT: `sub` the user id, `role` device or operator, `exp` required",
                },
                "capability": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "cap",
                    "description": "The per-call, per-device capability a VoIP push "
                    "carries; pass the device's `device_id` with it",
                },
            },
        },
        "tags": [{"name": "devices"}, {"name": "calls"}, {"name": "ops"}, {"name": "health"}],
        "x-websockets": WEBSOCKETS,
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(document())
