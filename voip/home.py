"""`GET /`: where things are, for a person or a tool that found the node's address. Links
only: no data, so no token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from voip.api import JSONResponse

INDEX = {
    "service": "voip-backend",
    "about": "Call signalling for iOS calling apps: WebSocket and SIP calls, PushKit VoIP pushes, "
    "and the call-status endpoint that ends ghost calls",
    "links": {
        "ops_page": {"href": "/ops", "auth": "none (the page asks for an operator token)"},
        "openapi": {"href": "/openapi.json", "auth": "none"},
        "health": {"href": "/healthz", "auth": "none"},
        "ready": {"href": "/readyz", "auth": "none"},
        "devices": {"href": "/v1/devices/{device_id}", "auth": "device token"},
        "ice_servers": {"href": "/v1/ice-servers", "auth": "device token"},
        "call_status": {"href": "/v1/calls/{call_id}/status", "auth": "device token, or the push's capability"},
        "websocket": {"href": "/v1/ws?device_id={device_id}", "auth": "device token"},
        "sip_websocket": {"href": "/v1/sip", "auth": "SIP digest on each REGISTER and INVITE (subprotocol sip)"},
        "ops_api": {"href": "/v1/ops/", "auth": "operator token"},
        "simulator_pushes": {"href": "/v1/ops/simulator/pushes", "auth": "operator token"},
        "simulator_fcm": {"href": "/v1/ops/simulator/fcm", "auth": "operator token"},
        "metrics": {"href": "/metrics", "auth": "operator token"},
    },
    "tokens": "development: python3 dev.py token alice; python3 dev.py token ops --role operator",
}


async def index(request: Request) -> Response:
    return JSONResponse(INDEX)
