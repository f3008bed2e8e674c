"""What the embedded APNs and FCM simulators received: a development node with no APNs (or
FCM) credentials pushes to them, and no real phone gets anything. Operators see each push, its payload (the
`status_url` included, so the capability path can be tried by hand), the simulator's
answer and what became of it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from apnsim import APNsSimulator
from apnsim.devices import Device
from apnsim.records import RecordedRequest
from fcmsim import FCMSimulator, RecordedMessage
from voip.api import JSONResponse, authenticate, node_of
from voip.ops.access import OPERATOR
from voip.ops.views import _int_param

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
HEADERS_SHOWN = ("apns-topic", "apns-push-type", "apns-priority", "apns-expiration", "apns-collapse-id")
NOT_SIMULATED = "APNs credentials are configured: pushes go to APNs, not to the bundled simulator"
SIMULATED = "no APNs credentials: pushes go to the bundled APNs simulator; no real phone receives anything"
FCM_NOT_SIMULATED = "FCM credentials are configured (or none, in production): no bundled FCM simulator"
FCM_SIMULATED = "no FCM credentials: Android pushes go to the bundled FCM simulator; no real phone receives anything"


def _fate(simulator: APNsSimulator, record: RecordedRequest) -> dict[str, Any]:
    """`delivery`: what the simulated APNs did with an accepted push."""
    if record.status is None:
        return {"delivery": "unanswered"}
    if record.status != 200:
        return {"delivery": "refused"}
    device: Device | None = simulator.devices.get(record.token or "")
    if device is None:
        return {"delivery": "unknown"}
    for delivery in device.inbox:
        if delivery.push.apns_id == record.apns_id:
            return {"delivery": "delivered", "stored": delivery.stored, "late": delivery.late}
    if device.pending is not None and device.pending.apns_id == record.apns_id:
        return {"delivery": "stored", "stored": True}
    for drop in device.dropped:
        if drop.push.apns_id == record.apns_id:
            return {"delivery": "dropped", "cause": drop.cause.value}
    return {"delivery": "unknown"}


def push_view(simulator: APNsSimulator, record: RecordedRequest) -> dict[str, Any]:
    token = record.token or ""
    return {
        "index": record.index,
        "received_at": int(record.received_at * 1000),
        "apns_id": record.apns_id,
        # Enough to tell devices apart, as in /v1/ops/devices.
        "device_token_prefix": token[:8] or None,
        "headers": {name: value for name in HEADERS_SHOWN if (value := record.header(name)) is not None},
        "payload": record.payload,
        "status": record.status,
        "reason": record.reason,
        **_fate(simulator, record),
    }


def _limit(request: Request) -> int:
    return _int_param(request, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT


async def simulator_pushes(request: Request) -> Response:
    authenticate(request, OPERATOR)
    limit = _limit(request)
    simulator = node_of(request).apns_simulator
    if simulator is None:
        return JSONResponse({"simulator": False, "note": NOT_SIMULATED, "endpoint": None, "received": 0, "pushes": []})
    records = [r for r in simulator.log.requests if r.method == "POST" and r.path.startswith("/3/device/")]
    newest = [push_view(simulator, r) for r in reversed(records[-limit:])]
    return JSONResponse(
        {
            "simulator": True,
            "note": SIMULATED,
            "endpoint": simulator.endpoint,
            "received": len(records),
            "pushes": newest,
        }
    )


def fcm_view(simulator: FCMSimulator, record: RecordedMessage) -> dict[str, Any]:
    token = record.token or ""
    return {
        "index": record.index,
        "received_at": int(record.received_at * 1000),
        "name": record.name,
        "device_token_prefix": token[:8] or None,
        "android": record.android,
        "data": record.data,
        "status": record.status,
        "error": record.error,
        **simulator.fate(record),
    }


async def fcm_messages(request: Request) -> Response:
    authenticate(request, OPERATOR)
    limit = _limit(request)
    simulator = node_of(request).fcm_simulator
    if simulator is None:
        return JSONResponse(
            {"simulator": False, "note": FCM_NOT_SIMULATED, "endpoint": None, "received": 0, "messages": []}
        )
    records = simulator.messages
    newest = [fcm_view(simulator, r) for r in reversed(records[-limit:])]
    return JSONResponse(
        {
            "simulator": True,
            "note": FCM_SIMULATED,
            "endpoint": simulator.endpoint,
            "received": len(records),
            "messages": newest,
        }
    )
