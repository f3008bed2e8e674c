"""`GET /readyz`: may a load balancer send this node traffic? Redis must answer; other
components add their own check (the push work adds APNs reachability):

    from voip.ops.health import add_readiness_check
    add_readiness_check(app, "apns", notifier.ready)   # async () -> None, raises when not

Details tell operators something without deciding readiness (how Redis keeps data):

    add_readiness_detail(app, "redis", node.epoch.readiness_detail)   # () -> JSON value

`/healthz` stays a liveness probe: it never touches a dependency, so a Redis outage does
not get every node restarted at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from voip.api import JSONResponse
from voip.node import Node
from voip.ops import metrics

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[object]]
ReadinessDetail = Callable[[], object]
CHECK_TIMEOUT = 2.0


def readiness_checks(app: Starlette) -> dict[str, ReadinessCheck]:
    checks: dict[str, ReadinessCheck] | None = getattr(app.state, "readiness_checks", None)
    if checks is None:
        node: Node = app.state.node
        checks = app.state.readiness_checks = {"redis": node.connections.client.ping}
    return checks


def add_readiness_check(app: Starlette, name: str, check: ReadinessCheck) -> None:
    readiness_checks(app)[name] = check


def add_readiness_detail(app: Starlette, name: str, detail: ReadinessDetail) -> None:
    details: dict[str, ReadinessDetail] = getattr(app.state, "readiness_details", {})
    app.state.readiness_details = {**details, name: detail}


async def _outcome(name: str, check: ReadinessCheck) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        outcome = f"timed out after {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        # Probes are unauthenticated: the kind of failure only, the details go to the log.
        log.warning("readyz.check_failed", check=name, exc_info=True)
        outcome = f"failed: {type(exc).__name__}"
    else:
        return "ok"
    metrics.READINESS_FAILURES.labels(name).inc()
    return outcome


async def readyz(request: Request) -> Response:
    node: Node = request.app.state.node
    if node.draining:
        # At once, without asking anything: a load balancer must stop sending traffic here.
        return JSONResponse(
            {"status": "draining", "checks": {}}, status_code=503, headers={"Cache-Control": "no-store"}
        )
    checks = readiness_checks(request.app)
    outcomes = await asyncio.gather(*(_outcome(name, check) for name, check in checks.items()))
    results = dict(zip(checks, outcomes))
    ready = all(outcome == "ok" for outcome in outcomes)
    body: dict[str, object] = {"status": "ready" if ready else "not_ready", "checks": results}
    if details := getattr(request.app.state, "readiness_details", None):
        # Shown, never counted: a Redis without persistence still serves calls.
        body["details"] = {name: detail() for name, detail in details.items()}
    return JSONResponse(
        body,
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
