"""The operators' routes."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route, WebSocketRoute

from voip.ops import access, health, live, page, simulator, views


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/ops/calls", views.list_calls, methods=["GET"]),
        Route("/v1/ops/calls/{call_id}", views.get_call, methods=["GET"]),
        Route("/v1/ops/devices/{user}", views.user_devices, methods=["GET"]),
        Route("/v1/ops/summary", views.summary, methods=["GET"]),
        Route("/v1/ops/simulator/pushes", simulator.simulator_pushes, methods=["GET"]),
        Route("/v1/ops/simulator/fcm", simulator.fcm_messages, methods=["GET"]),
        Route("/v1/ops/live/ticket", access.live_ticket, methods=["POST"]),
        WebSocketRoute("/v1/ops/live", live.live),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/ops", page.page, methods=["GET"]),
        Route("/ops/{name}", page.asset, methods=["GET"]),
    ]
