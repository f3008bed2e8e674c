"""`GET /readyz`: may a load balancer send this node traffic? Every check the node was
built with must pass (`Node.readiness_checks`: Redis answers; APNs gives a warm
connection). Details tell operators something without deciding readiness
(`Node.readiness_details`: how Redis keeps data).

`/healthz` stays a liveness probe: it never touches a dependency, so a Redis outage does
not get every node restarted at once.
"""

from __future__ import annotations

import asyncio
import structlog
from starlette.requests import Request
from starlette.responses import Response

from voip.api import JSONResponse
from voip.node import Node, ReadinessCheck
from voip.ops import metrics

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 2.0


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
    checks = node.readiness_checks
    outcomes = await asyncio.gather(*(_outcome(name, check) for name, check in checks.items()))
    results = dict(zip(checks, outcomes))
    ready = all(outcome == "ok" for outcome in outcomes)
    body: dict[str, object] = {"status": "ready" if ready else "not_ready", "checks": results}
    if node.readiness_details:
        # Shown, never counted: a Redis without persistence still serves calls.
        body["details"] = {name: detail() for name, detail in node.readiness_details.items()}
    return JSONResponse(
        body,
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
