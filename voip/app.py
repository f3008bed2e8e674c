"""The app factory: every route and every component of a node, wired in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from voip import api, history_api, home, metrics, metrics_route, openapi
from voip.node import Node, NodeParts
from voip.ops.routes import routes as ops_routes
from voip.redis_pool import UNAVAILABLE
from voip.settings import Settings
from voip.sipws import sip_socket
from voip.ws import device_socket


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = getattr(exc, "body", None) or {"error": _ERROR_NAMES.get(exc.status_code, "error"), "message": exc.detail}
    return api.JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return api.JSONResponse({"error": "internal_error", "message": "the request failed"}, status_code=500)


async def _redis_unavailable(request: Request, exc: Exception) -> Response:
    """Redis refused, dropped, timed out, or every pooled connection stayed busy: the
    request may work in a moment, so 503 with Retry-After, never a 500."""
    node: Node = request.app.state.node
    node.redis_unavailable.failed(route=request.url.path, error=type(exc).__name__)
    metrics.REDIS_UNAVAILABLE.labels("http").inc()
    retry_after = node.settings.redis_retry_after
    return api.JSONResponse(
        {
            "error": "unavailable",
            "message": "the service is briefly unavailable; retry later",
            "retry_after": retry_after,
        },
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )


_ERROR_NAMES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


DEVICE_SOCKET = "/v1/ws"


class NodeApp(Starlette):
    """The app, with the device WebSocket served before the middleware and the router.

    A socket's handler runs for the socket's whole life, and every layer it is called
    through (the error and exception middleware, the router, the route, Starlette's
    per-session exception wrapper) keeps its frame and closures alive as long: about
    3.5 KiB per idle socket (docs/benchmarks.md, the idle-socket row). None of them acts on
    a WebSocket that `device_socket` does not already answer itself (it refuses, closes
    1013 when Redis is unavailable, and handles every frame's errors) but Redis being
    unavailable past it, counted here as the exception middleware counted it; so the path
    is matched here first, and everything else goes the usual way."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == DEVICE_SOCKET:
            scope["app"] = self
            websocket = WebSocket(scope, receive, send)
            try:
                await device_socket(websocket)
            except UNAVAILABLE as exc:  # as the exception middleware did: counted, not raised
                await _redis_unavailable(websocket, exc)  # type: ignore[arg-type]
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, parts: NodeParts = NodeParts()) -> Starlette:
    """The node is built and started when the server starts (`app.state.node` from then
    on), and stopped when it stops."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        node = await Node.build(settings, parts)
        app.state.node = node
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    routes = [
        Route("/v1/devices", api.list_devices, methods=["GET"]),
        Route("/v1/devices/{device_id}", api.device, methods=["PUT", "DELETE"]),
        Route("/v1/ice-servers", api.ice_servers, methods=["GET"]),
        Route("/v1/calls/{call_id}/status", api.CallStatus(), methods=["GET"], name="call_status"),
        Route("/v1/calls", history_api.list_calls, methods=["GET"]),
        Route("/v1/calls/seen", history_api.mark_seen, methods=["POST"]),
        Route("/v1/me/availability", history_api.availability, methods=["GET", "PUT"]),
        Route("/", home.index, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", metrics_route.metrics, methods=["GET"]),
        WebSocketRoute(DEVICE_SOCKET, device_socket),  # listed; NodeApp serves it before routing
        WebSocketRoute("/v1/sip", sip_socket),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        *ops_routes(),
    ]
    app = NodeApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            **{error: _redis_unavailable for error in UNAVAILABLE},
            Exception: _server_error,
        },
    )
    return app
