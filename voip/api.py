"""The HTTP API: devices, and the call-status endpoint that a woken app calls first."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from voip import metrics
from voip.auth import AuthError, Principal
from voip.devices import ApnsEnvironment, DeviceRecord, Platform, Registration, register
from voip.node import Node
from voip.status import StatusAnswer, StatusRow
from voip.stores import CallError

# Not "." or "..": HTTP clients fold those path segments away.
DEVICE_ID = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._:-]{1,64}$")
MAX_BODY = 16 * 1024

HexToken = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-fA-F]{2}){32,100}$")]
# FCM registration tokens are opaque (about 150-180 characters today) of URL-safe base64
# and ':'; the bounds leave room for Google to lengthen them.
FcmToken = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:-]{20,1024}$")]
IOS_ONLY = ("voip_token", "apns_environment", "bundle_id", "alert_token")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(HTTPException):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.body = {"error": error, "message": message, **extra}


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Platform = Field("ios", description='"ios" (APNs: voip_token, alert_token) or "android" (FCM: fcm_token)')
    voip_token: HexToken | None = None
    apns_environment: ApnsEnvironment = "production"
    bundle_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]{1,155}$")] | None = None
    alert_token: HexToken | None = None
    fcm_token: FcmToken | None = Field(None, description="Android only: the FCM registration token")

    @model_validator(mode="after")
    def _one_platform(self) -> DeviceIn:
        # A token of the other platform would be pushed to the wrong service: refused
        # (422) rather than stored and failing at the first call.
        if self.platform == "ios" and self.fcm_token is not None:
            raise ValueError('fcm_token: only with platform "android"')
        if self.platform == "android":
            given = [name for name in IOS_ONLY if name in self.model_fields_set]
            if given:
                raise ValueError(f'{", ".join(given)}: iOS only; platform "android" registers fcm_token')
        return self


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def authenticate(request: Request, role: str) -> Principal:
    return _principal(node_of(request), request.headers.get("authorization"), role)


def _principal(node: Node, authorization: str | None, role: str) -> Principal:
    try:
        principal = node.auth.bearer(authorization)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    if principal.role != role:
        raise ApiError(403, "forbidden", f"{role} role required")
    return principal


def device_id_of(request: Request) -> str:
    device_id: str = request.path_params["device_id"]
    if not DEVICE_ID.match(device_id):
        raise ApiError(422, "validation_error", "device_id: 1-64 of A-Z a-z 0-9 . _ : -")
    return device_id


async def json_body(request: Request, model: type[BaseModel]) -> Any:
    # Refuse an oversize body as it arrives, not after holding all of it in memory.
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Gone mid-body, or cut off by the body timeout (voip/http_limits.py), which
        # has answered 408: nobody hears this one.
        raise ApiError(400, "incomplete_body", "the connection closed before the body ended") from None
    body = b"".join(chunks)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        detail = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(422, "validation_error", "the request body is invalid", detail=detail) from None


async def put_device(request: Request) -> Response:
    """Register or update one of the caller's devices.
    ---
    summary: Register or update a device
    """
    principal = authenticate(request, "device")
    device_id = device_id_of(request)
    body: DeviceIn = await json_body(request, DeviceIn)
    node = node_of(request)
    if body.platform == "ios" and node.apps is not None and not node.apps.serves(body.bundle_id):
        # Pushes to it could only fail (no key for its topic): refused now, not at its first call.
        if body.bundle_id is None:
            message = "bundle_id: needed, this service serves several iOS apps"
        else:
            message = f"bundle_id: {body.bundle_id} is not an app this service has APNs credentials for"
        raise ApiError(422, "unknown_app", message, bundle_id=body.bundle_id)
    now = int(time.time() * 1000)
    previous = await node.stores.devices.get(principal.user_id, device_id)
    record = register(
        DeviceRecord.from_stored(previous) if previous else None,
        Registration(
            body.voip_token,
            body.apns_environment,
            body.bundle_id,
            body.alert_token,
            platform=body.platform,
            fcm_token=body.fcm_token,
        ),
        now,
    ).stored()
    dropped = await node.stores.devices.put(principal.user_id, device_id, record, node.settings.max_devices_per_user)
    return JSONResponse(
        {"device_id": device_id, **record, "dropped_devices": dropped},
        status_code=201 if previous is None else 200,
    )


async def delete_device(request: Request) -> Response:
    principal = authenticate(request, "device")
    device_id = device_id_of(request)
    if not await node_of(request).stores.devices.delete(principal.user_id, device_id):
        raise ApiError(404, "unknown_device", "no such device")
    return Response(status_code=204)


async def list_devices(request: Request) -> Response:
    principal = authenticate(request, "device")
    devices = await node_of(request).stores.devices.registered(principal.user_id)
    return JSONResponse(
        {"devices": [{"device_id": k, **DeviceRecord.from_stored(v).stored()} for k, v in sorted(devices.items())]}
    )


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def canonical_uuid(raw: str) -> str | None:
    """The lower-case hyphenated form; the common case without building a UUID object
    (the status endpoint runs this on every request)."""
    if CANONICAL_UUID.fullmatch(raw):
        return raw.lower()
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def _query(raw: bytes) -> dict[str, str]:
    """Query parameters, last one wins. Status URLs carry only URL-safe characters, so
    the usual case skips Starlette's general parser (a tenth of this endpoint's CPU)."""
    if b"%" in raw or b"+" in raw:
        return dict(QueryParams(raw))
    params: dict[str, str] = {}
    for part in raw.decode("latin-1").split("&"):
        if part:
            name, _, value = part.partition("=")
            params[name] = value
    return params


def _header(scope: Scope, name: bytes) -> str | None:
    """The first header `name` (lower case, as servers give them), as Starlette's Headers reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    """What JSONResponse sends, byte for byte, without building one."""
    content = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"%d" % len(content)), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _unknown_call(send: Send, call_id: str, now: int) -> None:
    metrics.status_check_counter(metrics.UNKNOWN_CALL_STATE, True).inc()
    await _send_json(send, 404, StatusAnswer.unknown_call(call_id, now).body())


class CallStatus:
    """`GET /v1/calls/{call_id}/status`, what a woken app should do with the call a VoIP
    push announced: a bare ASGI app, so that the hottest route skips Starlette's
    per-request Request, Response and exception wrappers (errors still reach the app's
    handlers, raised as ApiError, as from every route).

    Authorised by a participant's bearer token, with an optional `device_id` that must
    be one of that user's devices in the call, or by the per-call, per-device capability
    (`cap`) that the VoIP push carries.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        node: Node = scope["app"].state.node
        # The node's clock, the one its calls' deadlines are set by (a test's ManualClock too).
        now = node.controller.clock.now_ms()
        raw_id: str = scope["path_params"]["call_id"]
        params = _query(scope.get("query_string", b""))
        device_id = params.get("device_id") or ""
        if device_id and not DEVICE_ID.match(device_id):
            raise ApiError(422, "validation_error", "device_id: 1-64 of A-Z a-z 0-9 . _ : -")
        if capability := params.get("cap"):
            if not device_id or not node.auth.check_capability(capability, raw_id.lower(), device_id):
                raise ApiError(401, "unauthorized", "invalid or expired capability")
            user, via = "", "capability"
        else:
            user, via = _principal(node, _header(scope, b"authorization"), "device").user_id, "bearer"
        call_id = canonical_uuid(raw_id)
        if call_id is None:
            return await _unknown_call(send, raw_id[:64], now)
        started = time.perf_counter()
        try:
            fields = await node.stores.calls.status_check(
                call_id, user=user, device=device_id, node=node.node_id, via=via, at=now
            )
        except CallError:  # not_your_device; the asker is a participant, so it learns nothing new
            raise ApiError(403, "forbidden", "device_id is not one of your devices in this call") from None
        metrics.REDIS_LATENCY.observe(time.perf_counter() - started)
        if fields is None:
            return await _unknown_call(send, call_id, now)
        answer = StatusAnswer.of(call_id, StatusRow.from_reply(fields), device_id or None, now)
        assert answer.state is not None
        metrics.status_check_counter(answer.state.value, answer.end_call).inc()
        await _send_json(send, 200, answer.body())


async def device(request: Request) -> Response:
    """One path, several methods: so that a 405 lists them all in `Allow`."""
    if request.method == "PUT":
        return await put_device(request)
    return await delete_device(request)


async def ice_servers(request: Request) -> Response:
    """The STUN and TURN servers for this user's media, with a TURN credential that
    expires in `ttl` seconds. Computed here (one HMAC), no Redis: coturn checks the
    credential on its own with the shared secret."""
    principal = authenticate(request, "device")
    ice = node_of(request).ice_servers
    answer = ice.for_user(principal.user_id)
    metrics.ICE_SERVERS.labels("turn" if ice.turn else "stun" if ice.stun else "none").inc()
    # A credential: no cache between the app and this node may keep it or hand it on.
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
